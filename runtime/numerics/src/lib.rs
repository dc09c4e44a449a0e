//! Bit-exact conversions between f32 and the narrow floats ONNX defines:
//! the four float8 formats, float4e2m1 and float8e8m0 (a bare exponent),
//! plus packing of 4- and 2-bit elements into bytes.
//!
//! A crate of its own, with no dependencies, because two crates need the
//! same definitions: drift-ops (constant folding, the WGSL rounding code it
//! mirrors) and drift-runtime (input/output conversion at the boundary). So
//! folding and the runtime can never disagree, while neither of those crates
//! depends on the other.
//!
//! Rounding follows ONNX's Cast (`onnx/reference/ops/op_cast.py`, which
//! defers to ml_dtypes): round to nearest, ties to even; out-of-range values
//! and infinities go to the largest finite value when saturating, otherwise
//! to infinity (E5M2) or NaN (formats without infinity). float4e2m1 has
//! neither, so it always saturates.

/// A narrow IEEE-like binary float format: sign, `exp_bits`, `man_bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MiniFloat {
    E4M3FN,
    E4M3FNUZ,
    E5M2,
    E5M2FNUZ,
    E2M1,
    /// IEEE half: here so the kernels can round to float16 with plain
    /// integer code (WGSL's pack2x16float needs a capability naga lacks).
    F16,
}

/// How a format spends its special codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specials {
    /// Largest exponent is infinity (mantissa 0) or NaN (IEEE: F16, E5M2).
    Ieee,
    /// Only the all-ones magnitude is NaN; no infinity (E4M3FN).
    TopNan,
    /// The negative-zero code is the one NaN; no infinity, no -0 (FNUZ).
    NegZeroNan,
    /// Every code is a finite number (E2M1).
    None,
}

impl MiniFloat {
    pub fn exp_bits(self) -> u32 {
        match self {
            MiniFloat::E4M3FN | MiniFloat::E4M3FNUZ => 4,
            MiniFloat::E5M2 | MiniFloat::E5M2FNUZ | MiniFloat::F16 => 5,
            MiniFloat::E2M1 => 2,
        }
    }

    pub fn man_bits(self) -> u32 {
        match self {
            MiniFloat::E4M3FN | MiniFloat::E4M3FNUZ => 3,
            MiniFloat::E5M2 | MiniFloat::E5M2FNUZ => 2,
            MiniFloat::E2M1 => 1,
            MiniFloat::F16 => 10,
        }
    }

    /// Exponent bias. The FNUZ formats use one more than IEEE would.
    pub fn bias(self) -> i32 {
        match self {
            MiniFloat::E4M3FN => 7,
            MiniFloat::E4M3FNUZ => 8,
            MiniFloat::E5M2 | MiniFloat::F16 => 15,
            MiniFloat::E5M2FNUZ => 16,
            MiniFloat::E2M1 => 1,
        }
    }

    pub fn specials(self) -> Specials {
        match self {
            MiniFloat::E5M2 | MiniFloat::F16 => Specials::Ieee,
            MiniFloat::E4M3FN => Specials::TopNan,
            MiniFloat::E4M3FNUZ | MiniFloat::E5M2FNUZ => Specials::NegZeroNan,
            MiniFloat::E2M1 => Specials::None,
        }
    }

    /// Bits below the sign bit.
    pub fn mag_bits(self) -> u32 {
        self.exp_bits() + self.man_bits()
    }

    /// Magnitude code of the largest finite value.
    pub fn max_code(self) -> u32 {
        let all = (1u32 << self.mag_bits()) - 1;
        match self.specials() {
            Specials::Ieee => (((1 << self.exp_bits()) - 1) << self.man_bits()) - 1,
            Specials::TopNan => all - 1,
            Specials::NegZeroNan | Specials::None => all,
        }
    }

    /// Code of the infinity of sign `s` (formats with one).
    pub fn inf_code(self, s: u32) -> u32 {
        (s << self.mag_bits()) | (((1 << self.exp_bits()) - 1) << self.man_bits())
    }

    /// The code a NaN of sign `s` becomes. float4e2m1 cannot hold NaN;
    /// ml_dtypes (and with it ONNX's reference) yields a zero of the
    /// opposite sign, which the test data records.
    pub fn nan_code(self, s: u32) -> u32 {
        match self.specials() {
            Specials::Ieee => self.inf_code(s) | (1 << (self.man_bits() - 1)),
            Specials::TopNan => (s << self.mag_bits()) | ((1 << self.mag_bits()) - 1),
            Specials::NegZeroNan => 1 << self.mag_bits(),
            Specials::None => (s ^ 1) << self.mag_bits(),
        }
    }

    /// The code an infinity or out-of-range value of sign `s` becomes.
    pub fn overflow_code(self, s: u32, saturate: bool) -> u32 {
        match self.specials() {
            _ if saturate => (s << self.mag_bits()) | self.max_code(),
            Specials::Ieee => self.inf_code(s),
            Specials::TopNan | Specials::NegZeroNan => self.nan_code(s),
            Specials::None => (s << self.mag_bits()) | self.max_code(),
        }
    }

    /// Encodes `x` (round to nearest even).
    pub fn encode(self, x: f32, saturate: bool) -> u32 {
        let bits = x.to_bits();
        let s = bits >> 31;
        let a = bits & 0x7fff_ffff;
        if a > 0x7f80_0000 {
            return self.nan_code(s);
        }
        if a == 0x7f80_0000 {
            return self.overflow_code(s, saturate);
        }
        let mag = self.round_magnitude(a);
        if mag > self.max_code() {
            return self.overflow_code(s, saturate);
        }
        if mag == 0 && self.specials() == Specials::NegZeroNan {
            return 0;
        }
        (s << self.mag_bits()) | mag
    }

    /// Magnitude code nearest to the finite f32 magnitude `a` (bits), which
    /// may lie past `max_code` when `a` is out of range.
    fn round_magnitude(self, a: u32) -> u32 {
        let biased = (a >> 23) as i32;
        // value = mant * 2^(exp - 23)
        let (exp, mant) = if biased == 0 { (-126, a & 0x7f_ffff) } else { (biased - 127, (a & 0x7f_ffff) | 0x80_0000) };
        let emin = 1 - self.bias();
        let e_eff = exp.max(emin);
        let shift = (23 - self.man_bits() as i32 + e_eff - exp).min(31) as u32;
        let q = round_shift_even(mant, shift);
        // Subnormals (e_eff = emin) come out as q itself; a carry into the
        // next binade lands on the right code in both cases.
        (((e_eff + self.bias() - 1) as u32) << self.man_bits()) + q
    }

    /// The value of code `c`.
    pub fn decode(self, c: u32) -> f32 {
        let s = (c >> self.mag_bits()) & 1;
        let mag = c & ((1 << self.mag_bits()) - 1);
        let exp_all = (1u32 << self.exp_bits()) - 1;
        let e = mag >> self.man_bits();
        let m = mag & ((1 << self.man_bits()) - 1);
        let nan = match self.specials() {
            Specials::Ieee => e == exp_all && m != 0,
            Specials::TopNan => mag == (1 << self.mag_bits()) - 1,
            Specials::NegZeroNan => s == 1 && mag == 0,
            Specials::None => false,
        };
        if nan {
            return f32::NAN;
        }
        let v = if self.specials() == Specials::Ieee && e == exp_all {
            f32::INFINITY
        } else if e == 0 {
            m as f32 * pow2(1 - self.bias() - self.man_bits() as i32)
        } else {
            f32::from_bits((((e as i32 - self.bias() + 127) as u32) << 23) | (m << (23 - self.man_bits())))
        };
        if s == 1 { -v } else { v }
    }

    /// `x` rounded to this format and widened back.
    pub fn round(self, x: f32, saturate: bool) -> f32 {
        self.decode(self.encode(x, saturate))
    }
}

/// `m / 2^shift` rounded to nearest, ties to even; `shift` ≤ 31.
fn round_shift_even(m: u32, shift: u32) -> u32 {
    if shift == 0 {
        return m;
    }
    let q = m >> shift;
    let r = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if r > half || (r == half && q & 1 == 1) { q + 1 } else { q }
}

/// 2^e as f32 for e in f32's normal range.
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// How float8e8m0 rounds a value between two powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum E8M0Round {
    Up,
    Down,
    Nearest,
}

impl E8M0Round {
    pub fn parse(s: &str) -> Option<E8M0Round> {
        match s {
            "up" => Some(E8M0Round::Up),
            "down" => Some(E8M0Round::Down),
            "nearest" => Some(E8M0Round::Nearest),
            _ => None,
        }
    }
}

/// Encodes `x` as float8e8m0 the way onnx.numpy_helper.to_float8e8m0 does:
/// the sign is dropped, NaN and infinities become 0xFF (NaN), the exponent
/// is rounded per `mode`, and a round-up from the largest exponent gives
/// NaN unless saturating.
pub fn encode_e8m0(x: f32, saturate: bool, mode: E8M0Round) -> u32 {
    let bits = x.to_bits();
    let exponent = (bits >> 23) & 0xff;
    if exponent == 0xff {
        return 0xff;
    }
    let round_up = match mode {
        E8M0Round::Up => bits & 0x7f_ffff != 0,
        E8M0Round::Down => false,
        E8M0Round::Nearest => {
            let guard = bits & 0x40_0000 != 0;
            let round = bits & 0x20_0000 != 0;
            let sticky = bits & 0x1f_ffff != 0;
            guard && (round || sticky || exponent > 0)
        }
    };
    if saturate && exponent == 0xfe && round_up { exponent } else { exponent + round_up as u32 }
}

/// The value of float8e8m0 code `c`: 2^(c-127), NaN for 0xFF.
pub fn decode_e8m0(c: u32) -> f32 {
    match c & 0xff {
        0xff => f32::NAN,
        // 2^-127 is an f32 subnormal.
        0 => f32::from_bits(0x0040_0000),
        e => f32::from_bits(e << 23),
    }
}

/// Packs `bits`-wide codes (2 or 4) into bytes, first element in the low
/// bits, as ONNX stores INT4/UINT4/FLOAT4E2M1/INT2/UINT2.
pub fn pack_sub_byte(codes: impl Iterator<Item = u32>, bits: u32, out: &mut Vec<u8>) {
    let per = 8 / bits;
    let mask = (1u32 << bits) - 1;
    let (mut byte, mut k) = (0u32, 0u32);
    for c in codes {
        byte |= (c & mask) << (k * bits);
        k += 1;
        if k == per {
            out.push(byte as u8);
            byte = 0;
            k = 0;
        }
    }
    if k > 0 {
        out.push(byte as u8);
    }
}

/// Element `i`'s `bits`-wide code in packed bytes (see `pack_sub_byte`).
pub fn unpack_sub_byte(bytes: &[u8], bits: u32, i: usize) -> u32 {
    let per = (8 / bits) as usize;
    (u32::from(bytes[i / per]) >> ((i % per) as u32 * bits)) & ((1 << bits) - 1)
}

/// Sign-extends a `bits`-wide two's complement code.
pub fn sign_extend(code: u32, bits: u32) -> i32 {
    ((code << (32 - bits)) as i32) >> (32 - bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 bit patterns: zeros, NaN, infinities, ties, overflow, subnormals
    /// of the targets and of f32.
    const INPUTS: [u32; 37] = [
        0x00000000, 0x80000000, 0x7fc00000, 0x7f800000, 0xff800000, 0x3f800000, 0xbfc00000, 0x3ef00000, 0x3ef80000,
        0x3f000000, 0x33d6bf95, 0xb3d6bf95, 0x43e00000, 0x43e80000, 0x43eb0000, 0x43f00000, 0x43fa0000, 0x47600000,
        0x47700000, 0x477fe000, 0x49742400, 0xc9742400, 0x3b000000, 0x3a800000, 0x3ac00000, 0x37000000, 0x36800000,
        0x3e800000, 0x3f400000, 0x40a00000, 0x40d00000, 0x40e00000, 0x00080000, 0x3dcccccd, 0x40400000, 0xc3700000,
        0x43800000,
    ];

    /// Codes of `INPUTS` from onnx.numpy_helper.saturate_cast (saturating)
    /// and ml_dtypes' astype (not saturating), onnx 1.23.2.
    #[rustfmt::skip]
    const EXPECTED: [(MiniFloat, [u8; 37], [u8; 37]); 5] = [
        (MiniFloat::E4M3FN, [0x00, 0x80, 0x7f, 0x7e, 0xfe, 0x38, 0xbc, 0x2f, 0x30, 0x30, 0x00, 0x80, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0xfe, 0x01, 0x00, 0x01, 0x00, 0x00, 0x28, 0x34, 0x4a, 0x4d, 0x4e, 0x00, 0x1d, 0x44, 0xf7, 0x78], [0x00, 0x80, 0x7f, 0x7f, 0xff, 0x38, 0xbc, 0x2f, 0x30, 0x30, 0x00, 0x80, 0x7e, 0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0xff, 0x01, 0x00, 0x01, 0x00, 0x00, 0x28, 0x34, 0x4a, 0x4d, 0x4e, 0x00, 0x1d, 0x44, 0xf7, 0x78]),
        (MiniFloat::E4M3FNUZ, [0x00, 0x00, 0x80, 0x7f, 0xff, 0x40, 0xc4, 0x37, 0x38, 0x38, 0x00, 0x00, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0xff, 0x02, 0x01, 0x02, 0x00, 0x00, 0x30, 0x3c, 0x52, 0x55, 0x56, 0x00, 0x25, 0x4c, 0xff, 0x7f], [0x00, 0x00, 0x80, 0x80, 0x80, 0x40, 0xc4, 0x37, 0x38, 0x38, 0x00, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0x01, 0x02, 0x00, 0x00, 0x30, 0x3c, 0x52, 0x55, 0x56, 0x00, 0x25, 0x4c, 0xff, 0x80]),
        (MiniFloat::E5M2, [0x00, 0x80, 0x7e, 0x7b, 0xfb, 0x3c, 0xbe, 0x38, 0x38, 0x38, 0x00, 0x80, 0x5f, 0x5f, 0x5f, 0x60, 0x60, 0x7b, 0x7b, 0x7b, 0x7b, 0xfb, 0x18, 0x14, 0x16, 0x00, 0x00, 0x34, 0x3a, 0x45, 0x46, 0x47, 0x00, 0x2e, 0x42, 0xdc, 0x5c], [0x00, 0x80, 0x7e, 0x7c, 0xfc, 0x3c, 0xbe, 0x38, 0x38, 0x38, 0x00, 0x80, 0x5f, 0x5f, 0x5f, 0x60, 0x60, 0x7b, 0x7c, 0x7c, 0x7c, 0xfc, 0x18, 0x14, 0x16, 0x00, 0x00, 0x34, 0x3a, 0x45, 0x46, 0x47, 0x00, 0x2e, 0x42, 0xdc, 0x5c]),
        (MiniFloat::E5M2FNUZ, [0x00, 0x00, 0x80, 0x7f, 0xff, 0x40, 0xc2, 0x3c, 0x3c, 0x3c, 0x00, 0x00, 0x63, 0x63, 0x63, 0x64, 0x64, 0x7f, 0x7f, 0x7f, 0x7f, 0xff, 0x1c, 0x18, 0x1a, 0x01, 0x00, 0x38, 0x3e, 0x49, 0x4a, 0x4b, 0x00, 0x32, 0x46, 0xe0, 0x60], [0x00, 0x00, 0x80, 0x80, 0x80, 0x40, 0xc2, 0x3c, 0x3c, 0x3c, 0x00, 0x00, 0x63, 0x63, 0x63, 0x64, 0x64, 0x7f, 0x80, 0x80, 0x80, 0x80, 0x1c, 0x18, 0x1a, 0x01, 0x00, 0x38, 0x3e, 0x49, 0x4a, 0x4b, 0x00, 0x32, 0x46, 0xe0, 0x60]),
        (MiniFloat::E2M1, [0x00, 0x08, 0x08, 0x07, 0x0f, 0x02, 0x0b, 0x01, 0x01, 0x01, 0x00, 0x08, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x06, 0x07, 0x07, 0x00, 0x00, 0x05, 0x0f, 0x07], [0x00, 0x08, 0x08, 0x07, 0x0f, 0x02, 0x0b, 0x01, 0x01, 0x01, 0x00, 0x08, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x06, 0x07, 0x07, 0x00, 0x00, 0x05, 0x0f, 0x07]),
    ];

    /// numpy's float16 codes of `INPUTS`.
    #[rustfmt::skip]
    const F16: [u32; 37] = [0x0000, 0x8000, 0x7e00, 0x7c00, 0xfc00, 0x3c00, 0xbe00, 0x3780, 0x37c0, 0x3800, 0x0002, 0x8002, 0x5f00, 0x5f40, 0x5f58, 0x5f80, 0x5fd0, 0x7b00, 0x7b80, 0x7bff, 0x7c00, 0xfc00, 0x1800, 0x1400, 0x1600, 0x0080, 0x0040, 0x3400, 0x3a00, 0x4500, 0x4680, 0x4700, 0x0000, 0x2e66, 0x4200, 0xdb80, 0x5c00];

    #[test]
    fn encodes_like_onnx_reference() {
        for (fmt, sat, non_sat) in EXPECTED {
            for (k, &bits) in INPUTS.iter().enumerate() {
                let x = f32::from_bits(bits);
                assert_eq!(fmt.encode(x, true), sat[k] as u32, "{fmt:?} saturating {x:e} ({bits:#x})");
                assert_eq!(fmt.encode(x, false), non_sat[k] as u32, "{fmt:?} {x:e} ({bits:#x})");
            }
        }
    }

    #[test]
    fn float16_path_matches_numpy() {
        for (k, &bits) in INPUTS.iter().enumerate() {
            assert_eq!(MiniFloat::F16.encode(f32::from_bits(bits), false), F16[k], "input {bits:#x}");
        }
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for fmt in [MiniFloat::E4M3FN, MiniFloat::E4M3FNUZ, MiniFloat::E5M2, MiniFloat::E5M2FNUZ, MiniFloat::E2M1] {
            for c in 0..(2u32 << fmt.mag_bits()) {
                let v = fmt.decode(c);
                if v.is_nan() {
                    continue;
                }
                // FNUZ has no -0: 0x80 is NaN, skipped above.
                assert_eq!(fmt.encode(v, false), c, "{fmt:?} code {c:#x} = {v}");
            }
        }
        // Spot values from the ONNX spec's format tables.
        assert_eq!(MiniFloat::E4M3FN.decode(0x7e), 448.0);
        assert_eq!(MiniFloat::E4M3FNUZ.decode(0x7f), 240.0);
        assert_eq!(MiniFloat::E5M2.decode(0x7b), 57344.0);
        assert_eq!(MiniFloat::E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(MiniFloat::E5M2FNUZ.decode(0x01), 2f32.powi(-17));
        assert_eq!(MiniFloat::E2M1.decode(0x0f), -6.0);
        assert!(MiniFloat::E4M3FNUZ.decode(0x80).is_nan());
    }

    /// float8e8m0 cases and onnx.numpy_helper.to_float8e8m0's codes per
    /// (mode, saturate).
    #[test]
    fn e8m0_matches_onnx_helper() {
        let inputs: [u32; 14] = [
            0x00000000, 0x80000000, 0x7fc00000, 0x7f800000, 0x3f800000, 0x3fc00000, 0x3f8ccccd, 0x3dfdf3b6, 0x40400000,
            0x00080000, 0x7f400000, 0x7f000000, 0xc0800000, 0x00600000,
        ];
        #[rustfmt::skip]
        let cases: [(E8M0Round, bool, [u32; 14]); 6] = [
            (E8M0Round::Up, true, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x80, 0x80, 0x7c, 0x81, 0x01, 0xfe, 0xfe, 0x81, 0x01]),
            (E8M0Round::Up, false, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x80, 0x80, 0x7c, 0x81, 0x01, 0xff, 0xfe, 0x81, 0x01]),
            (E8M0Round::Down, true, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x7f, 0x7f, 0x7b, 0x80, 0x00, 0xfe, 0xfe, 0x81, 0x00]),
            (E8M0Round::Down, false, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x7f, 0x7f, 0x7b, 0x80, 0x00, 0xfe, 0xfe, 0x81, 0x00]),
            (E8M0Round::Nearest, true, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x80, 0x7f, 0x7c, 0x81, 0x00, 0xfe, 0xfe, 0x81, 0x01]),
            (E8M0Round::Nearest, false, [0x00, 0x00, 0xff, 0xff, 0x7f, 0x80, 0x7f, 0x7c, 0x81, 0x00, 0xff, 0xfe, 0x81, 0x01]),
        ];
        for (mode, sat, want) in cases {
            for (k, &bits) in inputs.iter().enumerate() {
                assert_eq!(encode_e8m0(f32::from_bits(bits), sat, mode), want[k], "{mode:?} {sat} {bits:#x}");
            }
        }
        assert_eq!(decode_e8m0(0x00), 2f32.powi(-127));
        assert_eq!(decode_e8m0(0x7f), 1.0);
        assert!(decode_e8m0(0xff).is_nan());
    }

    #[test]
    fn sub_byte_packing_matches_onnx_layout() {
        // onnx.numpy_helper._pack_4bitx2([1, -2, 7]) == [0xe1, 0x07];
        // _pack_2bitx4([1, -2, 0, -1, 1]) == [0xc9, 0x01].
        let mut out = Vec::new();
        pack_sub_byte([1i32, -2, 7].iter().map(|&v| v as u32), 4, &mut out);
        assert_eq!(out, [0xe1, 0x07]);
        let mut out = Vec::new();
        pack_sub_byte([1i32, -2, 0, -1, 1].iter().map(|&v| v as u32), 2, &mut out);
        assert_eq!(out, [0xc9, 0x01]);
        assert_eq!(sign_extend(unpack_sub_byte(&[0xe1, 0x07], 4, 1), 4), -2);
        assert_eq!(sign_extend(unpack_sub_byte(&[0xc9, 0x01], 2, 3), 2), -1);
        assert_eq!(unpack_sub_byte(&[0xc9, 0x01], 2, 4), 1);
    }
}
