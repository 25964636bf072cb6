//! Hand-written x86 inner loops for the hot cases (used when `simd::isa()` allows them):
//!
//! - matrix–vector with 2- or 4-bit codes: a 16-entry float table per group holds the
//!   dequantized value of every code (`scale · (code − zero)`), and `vpermps` looks the codes up
//!   straight from the packed bytes. The activations are permuted once per call into "planar"
//!   order so that the codes of one bit position in a byte line up with contiguous activations.
//!   (The loop handles 1-bit codes too, but those take the faster kernels below.)
//! - matrix–vector with 1-bit codes, group size and K multiples of 64: 16 weight rows at a time,
//!   one row per lane; per 4 activations a 16-entry table of their subset sums, looked up with
//!   `vpermps` by the 4 codes of each row (the T-MAC scheme), so one lookup serves 64 codes.
//! - matrix–vector with 1-bit codes otherwise (multiples of 16), and the last `N mod 16` rows:
//!   each 16 packed bits are an AVX-512 mask under which one FMA adds `scale · x`.
//! - matrix–vector with 3-, 5-, 6- or 7-bit codes (needs VBMI as well): `vpermb` moves the bytes
//!   holding each 32-bit lane's codes into that lane, a per-lane shift aligns one code per lane,
//!   and the code becomes a weight through a table (`vpermps` for 3 bits, `vpermt2ps` for 5 bits)
//!   or by convert + one FMA `s·q − s·z` (6 and 7 bits).
//! - matrix–vector with 8-bit codes: widen, convert, multiply-add per group, scale per group.
//! - unpacking of 3/5/6/7-bit rows (VBMI: `vpermb` + `vpmultishiftqb`, 64 codes at a time; BMI2:
//!   `pdep`, 8 codes at a time).
//! - spike accumulation with 4-bit codes (AVX2 suffices): nibbles are selected by the spike
//!   byte mask (AND) and summed with `vpsadbw`: integer adds only.
//!
//! Each requires the group size and K to be multiples of the chunk the loop consumes; callers
//! check [`lut_gemv_applies`], [`gemv1_table_applies`], [`gemv1_applies`], [`odd_gemv_lanes`],
//! [`gemv8_applies`] and [`spike4_applies`] and fall back to the portable loops otherwise. No loop reads past the
//! packed buffer: full-width loads are used only where 64 bytes remain, masked loads elsewhere.

#![allow(clippy::missing_safety_doc)]

use crate::qweights::QWeights;
use std::arch::x86_64::*;

/// Elements per 16-byte chunk of `bits`-bit codes.
#[inline]
fn chunk_elems(bits: u32) -> usize {
    16 * (8 / bits as usize)
}

pub fn lut_gemv_applies(w: &QWeights) -> bool {
    matches!(w.bits, 1 | 2 | 4)
        && w.group_size.is_multiple_of(chunk_elems(w.bits))
        && w.k.is_multiple_of(chunk_elems(w.bits))
}

pub fn gemv8_applies(w: &QWeights) -> bool {
    w.bits == 8 && w.group_size.is_multiple_of(16) && w.k.is_multiple_of(16)
}

pub fn spike4_applies(w: &QWeights) -> bool {
    w.bits == 4 && w.group_size.is_multiple_of(64) && w.k.is_multiple_of(64)
}

/// One cache line of activations: 16 floats on a 64-byte boundary (the kernels' 64-byte loads
/// of an [`AlignedX`] never straddle two lines).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Activations `[m, k]` copied onto 64-byte boundaries (rows too, where `k` is a multiple of 16).
pub struct AlignedX {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedX {
    fn zeroed(len: usize) -> Self {
        Self { lines: vec![Line([0.0; 16]); len.div_ceil(16)], len }
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32 without padding (repr(C), size 64), so `lines` holds
        // 16·lines.len() ≥ len initialized, contiguous f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in as_slice, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }

    /// A 64-byte-aligned copy of `x`.
    pub fn copy(x: &[f32]) -> Self {
        let mut a = Self::zeroed(x.len());
        a.as_mut_slice().copy_from_slice(x);
        a
    }
}

/// Planar order: inside each chunk of `16·per` activations, plane `p` (elements `per·i + p`)
/// becomes the contiguous run `[16p, 16p + 16)`. (`per` = codes per byte for the table paths,
/// codes per 32-bit lane for the odd-width path.) Columns past the last whole chunk are copied
/// as they are.
pub fn planar(x: &[f32], m: usize, k: usize, per: usize) -> AlignedX {
    let ce = 16 * per;
    let mut a = AlignedX::copy(&x[..m * k]);
    let xp = a.as_mut_slice();
    for mi in 0..m {
        for c in 0..k / ce {
            let src = &x[mi * k + c * ce..mi * k + (c + 1) * ce];
            let dst = &mut xp[mi * k + c * ce..mi * k + (c + 1) * ce];
            for i in 0..16 {
                for p in 0..per {
                    dst[p * 16 + i] = src[per * i + p];
                }
            }
        }
    }
    a
}

/// The decoded value of every 4-bit table index for `bits`-bit codes (only the low `bits` bits
/// of an index matter: `vpermps` reads 4 index bits, the higher ones belong to other codes).
fn base_table(bits: u32, signed: bool) -> [f32; 16] {
    let mut t = [0.0f32; 16];
    let mask = (1u32 << bits) - 1;
    for (i, v) in t.iter_mut().enumerate() {
        let c = i as u32 & mask;
        *v = if signed && c >= 1 << (bits - 1) { c as f32 - (1u32 << bits) as f32 } else { c as f32 };
    }
    t
}

/// Rows `n0..` of the matrix–vector product for 1/2/4-bit codes; `out` is `[rows, m]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn gemv_lut_rows(w: &QWeights, xp: &[f32], m: usize, n0: usize, out: &mut [f32]) {
    if m == 1 {
        match w.bits {
            4 => return gemv_lut_m1::<4>(w, xp, n0, out),
            2 => return gemv_lut_m1::<2>(w, xp, n0, out),
            _ => return gemv_lut_m1::<1>(w, xp, n0, out),
        }
    }
    let bits = w.bits;
    let per = (8 / bits) as usize;
    let ce = chunk_elems(bits);
    let base = _mm512_loadu_ps(base_table(bits, w.signed()).as_ptr());
    let k = w.k;
    let chunks_per_group = w.group_size / ce;
    let mut acc = [_mm512_setzero_ps(); 16];
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        let row = w.row(n);
        let nacc = 2 * m;
        for a in acc.iter_mut().take(nacc.min(16)) {
            *a = _mm512_setzero_ps();
        }
        let mut c = 0usize;
        for g in 0..w.groups {
            let s = _mm512_set1_ps(w.scales[n * w.groups + g]);
            let lut = match w.zero_points {
                None => _mm512_mul_ps(s, base),
                Some(z) => _mm512_mul_ps(s, _mm512_sub_ps(base, _mm512_set1_ps(z[n * w.groups + g]))),
            };
            let end = (c + chunks_per_group).min(k / ce);
            while c < end {
                let idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(row.as_ptr().add(c * 16) as *const __m128i));
                for p in 0..per {
                    let sh = match p {
                        0 => idx,
                        _ => _mm512_srlv_epi32(idx, _mm512_set1_epi32((p as u32 * bits) as i32)),
                    };
                    let wv = _mm512_permutexvar_ps(sh, lut);
                    for mi in 0..m {
                        let xv = _mm512_loadu_ps(xp.as_ptr().add(mi * k + c * ce + p * 16));
                        let a = &mut acc[(mi * 2 + (p & 1)) % 16];
                        *a = _mm512_fmadd_ps(xv, wv, *a);
                    }
                }
                c += 1;
            }
        }
        for (mi, om) in o.iter_mut().enumerate() {
            *om = _mm512_reduce_add_ps(_mm512_add_ps(acc[(mi * 2) % 16], acc[(mi * 2 + 1) % 16]));
        }
    }
}

/// How far ahead of the codes being read the batch-1 loop prefetches (the rows of a matrix are
/// contiguous, so this runs into the next rows).
const PREFETCH_BYTES: usize = 2048;

/// Batch-1 case with the accumulators in registers: 4 independent FMA chains.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gemv_lut_m1<const B: u32>(w: &QWeights, xp: &[f32], n0: usize, out: &mut [f32]) {
    let per = (8 / B) as usize;
    let ce = 16 * per;
    let base = _mm512_loadu_ps(base_table(B, w.signed()).as_ptr());
    let chunks_per_group = w.group_size / ce;
    let nchunks = w.k / ce;
    for (r, o) in out.iter_mut().enumerate() {
        let n = n0 + r;
        let row = w.row(n).as_ptr();
        // Two sets of accumulators, swapped after every chunk: 4 independent FMA chains for
        // 4-bit codes (more for narrower codes), all indexed by constants so they stay in registers.
        let mut cur = [_mm512_setzero_ps(); 8];
        let mut nxt = [_mm512_setzero_ps(); 8];
        let mut c = 0usize;
        for g in 0..w.groups {
            let s = _mm512_set1_ps(*w.scales.get_unchecked(n * w.groups + g));
            let lut = match w.zero_points {
                None => _mm512_mul_ps(s, base),
                Some(z) => _mm512_mul_ps(s, _mm512_sub_ps(base, _mm512_set1_ps(z[n * w.groups + g]))),
            };
            let end = (c + chunks_per_group).min(nchunks);
            while c < end {
                if c % 4 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c * 16 + PREFETCH_BYTES) as *const i8);
                }
                let idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(row.add(c * 16) as *const __m128i));
                let xc = xp.as_ptr().add(c * ce);
                for p in 0..per {
                    let sh = if p == 0 { idx } else { _mm512_srlv_epi32(idx, _mm512_set1_epi32((p as u32 * B) as i32)) };
                    let wv = _mm512_permutexvar_ps(sh, lut);
                    cur[p] = _mm512_fmadd_ps(_mm512_loadu_ps(xc.add(p * 16)), wv, cur[p]);
                }
                core::mem::swap(&mut cur, &mut nxt);
                c += 1;
            }
        }
        let mut t = _mm512_setzero_ps();
        for p in 0..per {
            t = _mm512_add_ps(t, _mm512_add_ps(cur[p], nxt[p]));
        }
        *o = _mm512_reduce_add_ps(t);
    }
}

/// Rows `n0..` of the matrix–vector product for 8-bit codes; `out` is `[rows, m]`.
/// `xsum` holds the per-group activation sums (zero points only).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn gemv8_rows(w: &QWeights, x: &[f32], m: usize, xsum: &[f32], n0: usize, out: &mut [f32]) {
    let k = w.k;
    let signed = w.signed();
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        let row = w.row(n);
        for (mi, om) in o.iter_mut().enumerate() {
            let xr = x.as_ptr().add(mi * k);
            let mut total = _mm512_setzero_ps();
            let mut corr = 0.0f32;
            for g in 0..w.groups {
                let (a, b) = w.group_range(g);
                let mut acc0 = _mm512_setzero_ps();
                let mut acc1 = _mm512_setzero_ps();
                let mut j = a;
                while j < b {
                    let raw = _mm_loadu_si128(row.as_ptr().add(j) as *const __m128i);
                    let q = if signed { _mm512_cvtepi8_epi32(raw) } else { _mm512_cvtepu8_epi32(raw) };
                    let xv = _mm512_loadu_ps(xr.add(j));
                    if (j / 16) & 1 == 0 {
                        acc0 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(q), acc0);
                    } else {
                        acc1 = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(q), acc1);
                    }
                    j += 16;
                }
                let s = w.scales[n * w.groups + g];
                total = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_add_ps(acc0, acc1), total);
                if let Some(z) = w.zero_points {
                    corr += s * (z[n * w.groups + g] * xsum[mi * w.groups + g]);
                }
            }
            *om = _mm512_reduce_add_ps(total) - corr;
        }
    }
}

/// Whether the CPU has AVX-512 VBMI (`vpermb`, `vpmultishiftqb`), which the odd-width paths need
/// on top of the AVX-512 level of `simd::isa()` (std caches the detection).
#[inline]
pub fn has_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Activation rows handled together by the 1-bit and odd-width matrix–vector kernels: a larger
/// batch is split into blocks of at most this many rows, each decoding the weights once (the
/// accumulators of a block stay in registers).
const MBLOCK: usize = 4;

pub fn gemv1_applies(w: &QWeights) -> bool {
    w.bits == 1 && w.group_size.is_multiple_of(16) && w.k.is_multiple_of(16)
}

/// Rows `n0..` of the matrix–vector product for 1-bit codes; `out` is `[rows, m]`, `xsum` the
/// per-group activation sums (zero points only). Requires [`gemv1_applies`].
///
/// Code `16c + j` of a row is bit `j` of the little-endian 16-bit word at byte `2c` of the row
/// (packing layout), so that word is the AVX-512 mask of the activations `[16c, 16c + 16)` whose
/// code is 1. Per chunk of 16 codes one masked FMA adds `s · x` to the lanes whose code is 1;
/// the row total `Σ_g s·sel_g` is then
/// - unsigned codes `{0, 1}`: corrected by `Σ_g s·z·Σx` (a 16-lane dot product over the groups);
/// - signed codes `{0, −1}` (a set bit is −1): negated.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn gemv1_rows(w: &QWeights, x: &[f32], m: usize, xsum: &[f32], n0: usize, out: &mut [f32]) {
    assert!(gemv1_applies(w) && x.len() >= m * w.k && n0 + out.len() / m.max(1) <= w.n);
    assert!(w.signed() || xsum.len() >= m * w.groups);
    // Chunks per group known at compile time for the common group sizes (16, 32, 64, 128).
    let cpg = w.group_size / 16;
    let mut m0 = 0;
    while m0 < m {
        let mb = (m - m0).min(MBLOCK);
        macro_rules! by_cpg {
            ($mb:literal) => {
                match cpg {
                    1 => gemv1_block::<$mb, 1>(w, x, m, m0, xsum, n0, out),
                    2 => gemv1_block::<$mb, 2>(w, x, m, m0, xsum, n0, out),
                    4 => gemv1_block::<$mb, 4>(w, x, m, m0, xsum, n0, out),
                    8 => gemv1_block::<$mb, 8>(w, x, m, m0, xsum, n0, out),
                    _ => gemv1_block::<$mb, 0>(w, x, m, m0, xsum, n0, out),
                }
            };
        }
        match mb {
            1 => by_cpg!(1),
            2 => by_cpg!(2),
            3 => by_cpg!(3),
            _ => by_cpg!(4),
        }
        m0 += mb;
    }
}

/// `Σ_i a[i]·b[i]·c[i]` in 16 lanes (masked tail), reduced once.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let mk: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
        let va = _mm512_maskz_loadu_ps(mk, a.as_ptr().add(i));
        let vb = _mm512_maskz_loadu_ps(mk, b.as_ptr().add(i));
        let vc = _mm512_maskz_loadu_ps(mk, c.as_ptr().add(i));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(va, vb), vc, acc);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// Activation rows `m0..m0 + MB` of [`gemv1_rows`]; `CPG` is the number of 16-code chunks per
/// group when it is fixed at compile time (0: read from `w`). With `CPG`, whole groups run
/// unrolled, two at a time for a single row (8 accumulators: 8 independent FMA chains).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gemv1_block<const MB: usize, const CPG: usize>(
    w: &QWeights,
    x: &[f32],
    m: usize,
    m0: usize,
    xsum: &[f32],
    n0: usize,
    out: &mut [f32],
) {
    let (k, groups) = (w.k, w.groups);
    let nchunks = k / 16;
    let cpg = if CPG == 0 { w.group_size / 16 } else { CPG };
    // Accumulators per row, and groups per unrolled step (CPG only).
    let nacc = if MB == 1 { 8 } else { 4 };
    let step = if CPG == 0 { 1 } else { (nacc / cpg).max(1) };
    // Whole groups (the last one may be partial).
    let whole = (nchunks / cpg).min(groups);
    let xr = x.as_ptr().add(m0 * k);
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        // K / 8 = 2 · nchunks bytes: every 16-bit read below is inside the row.
        let rp = w.row(n).as_ptr();
        let srow = &w.scales[n * groups..(n + 1) * groups];
        let mut acc = [[_mm512_setzero_ps(); 8]; MB];
        // Chunk `$c` with scale `$sv` into accumulator `$a`.
        macro_rules! chunk {
            ($c:expr, $a:expr, $sv:expr) => {{
                let mk: __mmask16 = (rp.add(2 * $c) as *const u16).read_unaligned();
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(xr.add(i * k + 16 * $c));
                    a[$a] = _mm512_mask3_fmadd_ps(xv, $sv, a[$a], mk);
                }
            }};
        }
        let mut g = 0;
        if CPG != 0 {
            while g + step <= whole {
                for u in 0..step {
                    let sv = _mm512_set1_ps(srow[g + u]);
                    for j in 0..CPG {
                        chunk!((g + u) * CPG + j, (u * CPG + j) % nacc, sv);
                    }
                }
                g += step;
            }
        }
        let mut c = g * cpg;
        while g < groups {
            let sv = _mm512_set1_ps(srow[g]);
            let end = (c + cpg).min(nchunks);
            while c + 4 <= end {
                chunk!(c, 0, sv);
                chunk!(c + 1, 1, sv);
                chunk!(c + 2, 2, sv);
                chunk!(c + 3, 3, sv);
                c += 4;
            }
            while c < end {
                chunk!(c, 0, sv);
                c += 1;
            }
            g += 1;
        }
        for (i, a) in acc.iter().enumerate() {
            let t = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])),
                _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7])),
            );
            let sum = _mm512_reduce_add_ps(t);
            o[m0 + i] = match w.zero_points {
                // Signed codes: a set bit is −1.
                None => -sum,
                Some(z) => {
                    let zr = &z[n * groups..(n + 1) * groups];
                    sum - dot3(srow, zr, &xsum[(m0 + i) * groups..(m0 + i + 1) * groups])
                }
            };
        }
    }
}

/// Weight rows of one block of the 1-bit table kernel ([`gemv1_table_rows`]).
pub const TBLOCK: usize = 16;

/// Whether the 1-bit table kernel applies: 64-code units (one 64-bit word per row) never
/// straddle a group.
pub fn gemv1_table_applies(w: &QWeights) -> bool {
    w.bits == 1 && w.group_size.is_multiple_of(64) && w.k.is_multiple_of(64)
}

/// Activation tables of the 1-bit table kernel: for activation row `mi` and every 4 columns
/// `[4i, 4i + 4)`, the 16 sums `T[v] = Σ_{t < 4, bit t of v set} x[4i + t]` (one cache line,
/// summed in the order t = 0, 1, 2, 3). Layout `[m, k/4, 16]`. Requires `k % 4 == 0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn act_tables(x: &[f32], m: usize, k: usize) -> AlignedX {
    let mut t = AlignedX::zeroed(m * k * 4);
    for (x4, line) in x[..m * k].chunks_exact(4).zip(t.as_mut_slice().chunks_exact_mut(16)) {
        let mut v = _mm512_setzero_ps();
        v = _mm512_mask_add_ps(v, 0xAAAA, v, _mm512_set1_ps(x4[0]));
        v = _mm512_mask_add_ps(v, 0xCCCC, v, _mm512_set1_ps(x4[1]));
        v = _mm512_mask_add_ps(v, 0xF0F0, v, _mm512_set1_ps(x4[2]));
        v = _mm512_mask_add_ps(v, 0xFF00, v, _mm512_set1_ps(x4[3]));
        _mm512_storeu_ps(line.as_mut_ptr(), v);
    }
    t
}

/// Transpose 16 × 16 32-bit elements: `r[i]` lane `j` becomes `r[j]` lane `i`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // Within 128-bit blocks: 4 × 4 transposes of each group of 4 rows.
    let mut u = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let t0 = _mm512_unpacklo_epi32(r[4 * q], r[4 * q + 1]);
        let t1 = _mm512_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
        let t2 = _mm512_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
        let t3 = _mm512_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
        u[4 * q] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * q + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * q + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * q + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // u[4q + e], block j, holds column 4j + e of rows 4q..4q + 4: a 4 × 4 transpose of blocks.
    for e in 0..4 {
        let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let x0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let x1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
        let y0 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let y1 = _mm512_shuffle_i32x4::<0xEE>(c, d);
        r[e] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        r[4 + e] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
        r[8 + e] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        r[12 + e] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
    }
}

/// `dst[g·16 + l] = src[l·groups + g]` for the 16 rows of per-group parameters in `src`
/// (`[16, groups]`; `dst` is `[groups, 16]`), 16 groups at a time through [`transpose16`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn transpose_params(src: &[f32], groups: usize, dst: &mut [f32]) {
    assert!(src.len() >= TBLOCK * groups && dst.len() >= TBLOCK * groups);
    let mut g0 = 0;
    while g0 < groups {
        let gl = (groups - g0).min(16);
        let lm: __mmask16 = if gl == 16 { !0 } else { (1u16 << gl) - 1 };
        let mut r = [_mm512_setzero_si512(); 16];
        for (l, rl) in r.iter_mut().enumerate() {
            *rl = _mm512_castps_si512(_mm512_maskz_loadu_ps(lm, src.as_ptr().add(l * groups + g0)));
        }
        transpose16(&mut r);
        for (j, rj) in r.iter().enumerate().take(gl) {
            _mm512_storeu_ps(dst.as_mut_ptr().add((g0 + j) * TBLOCK), _mm512_castsi512_ps(*rj));
        }
        g0 += gl;
    }
}

/// Rows `n0..n0 + 16·blocks` of the 1-bit matrix–vector product, [`TBLOCK`] rows at a time, lane
/// `l` of every vector = weight row `l` of the block (the T-MAC scheme); `out` is `[rows, m]`,
/// `tables` = [`act_tables`], `xsum` the per-group activation sums (zero points only). Requires
/// [`gemv1_table_applies`] and `out.len() == 16·blocks·m`.
///
/// Per block and 64-code unit, the 16 rows' 64-bit words are transposed (16 × 16 dwords per 8
/// units) so that one 32-bit vector holds the same 32 codes of the 16 rows; for each 4 codes,
/// a shift brings them to the low nibble and `vpermps` reads the activation table of those 4
/// columns at that nibble: the sum of the activations whose code is 1, for 16 rows at once.
/// Per group the sums are multiplied by the 16 rows' scales; the result is negated (signed
/// codes, a set bit is −1) or corrected by `Σ_g s·z·Σx` (unsigned codes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn gemv1_table_rows(w: &QWeights, tables: &[f32], m: usize, xsum: &[f32], n0: usize, out: &mut [f32]) {
    let blocks = out.len() / (TBLOCK * m.max(1));
    assert!(gemv1_table_applies(w) && tables.len() >= m * w.k * 4 && n0 + blocks * TBLOCK <= w.n);
    assert!(out.len() == blocks * TBLOCK * m && (w.signed() || xsum.len() >= m * w.groups));
    // Scales of a block, transposed ([groups, 16]), and with zero points `s·z`, transposed.
    let groups = w.groups;
    let mut st = AlignedX::zeroed(groups * TBLOCK);
    let mut szt = AlignedX::zeroed(if w.signed() { 0 } else { groups * TBLOCK });
    for (b, o) in out.chunks_exact_mut(TBLOCK * m).enumerate() {
        let nb = n0 + b * TBLOCK;
        transpose_params(&w.scales[nb * groups..(nb + TBLOCK) * groups], groups, st.as_mut_slice());
        if let Some(z) = w.zero_points {
            let szs = szt.as_mut_slice();
            transpose_params(&z[nb * groups..(nb + TBLOCK) * groups], groups, szs);
            for (sz, &s) in szs.iter_mut().zip(st.as_slice()) {
                *sz *= s;
            }
        }
        let mut m0 = 0;
        while m0 < m {
            let mb = (m - m0).min(MBLOCK);
            match mb {
                1 => table_block::<1>(w, tables, st.as_slice(), szt.as_slice(), m, m0, xsum, nb, o),
                2 => table_block::<2>(w, tables, st.as_slice(), szt.as_slice(), m, m0, xsum, nb, o),
                3 => table_block::<3>(w, tables, st.as_slice(), szt.as_slice(), m, m0, xsum, nb, o),
                _ => table_block::<4>(w, tables, st.as_slice(), szt.as_slice(), m, m0, xsum, nb, o),
            }
            m0 += mb;
        }
    }
}

/// Activation rows `m0..m0 + MB` of one block of [`gemv1_table_rows`] (weight rows `nb..nb + 16`,
/// `out` `[16, m]`, `st` the block's transposed scales).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn table_block<const MB: usize>(
    w: &QWeights,
    tables: &[f32],
    st: &[f32],
    szt: &[f32],
    m: usize,
    m0: usize,
    xsum: &[f32],
    nb: usize,
    out: &mut [f32],
) {
    let k = w.k;
    let groups = w.groups;
    let units = k / 64;
    let upg = w.group_size / 64;
    let rb = w.row_bytes;
    let base = w.packed.as_ptr().add(nb * rb);
    let tab = tables.as_ptr().add(m0 * k * 4);
    let signed = w.signed();
    let mut tot = [_mm512_setzero_ps(); MB];
    let mut acc = [[_mm512_setzero_ps(); 4]; MB];
    let mut left = upg;
    let mut g = 0;
    let mut u0 = 0;
    while u0 < units {
        // 8 units (64 bytes) of each row; fewer at the end of the row (masked: inside the row).
        let nu = (units - u0).min(8);
        let lm: __mmask64 = if nu == 8 { !0 } else { (1u64 << (8 * nu)) - 1 };
        let mut d = [_mm512_setzero_si512(); 16];
        for (l, dl) in d.iter_mut().enumerate() {
            let src = base.add(l * rb + 8 * u0);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_BYTES) as *const i8);
            *dl = _mm512_maskz_loadu_epi8(lm, src as *const i8);
        }
        transpose16(&mut d);
        for uu in 0..nu {
            let u = u0 + uu;
            let (lo, hi) = (d[2 * uu], d[2 * uu + 1]);
            // Codes 4i..4i + 4 of unit u (nibble `$sh / 4` of `$v`) through the table of
            // columns 64u + 4i, into accumulator `$a`.
            macro_rules! nibble {
                ($v:expr, $sh:literal, $i:literal, $a:literal) => {{
                    let idx = if $sh == 0 { $v } else { _mm512_srli_epi32::<$sh>($v) };
                    for (mi, a) in acc.iter_mut().enumerate() {
                        let t = _mm512_load_ps(tab.add((mi * k / 4 + 16 * u + $i) * 16));
                        a[$a] = _mm512_add_ps(a[$a], _mm512_permutexvar_ps(idx, t));
                    }
                }};
            }
            nibble!(lo, 0, 0, 0);
            nibble!(lo, 4, 1, 1);
            nibble!(lo, 8, 2, 2);
            nibble!(lo, 12, 3, 3);
            nibble!(lo, 16, 4, 0);
            nibble!(lo, 20, 5, 1);
            nibble!(lo, 24, 6, 2);
            nibble!(lo, 28, 7, 3);
            nibble!(hi, 0, 8, 0);
            nibble!(hi, 4, 9, 1);
            nibble!(hi, 8, 10, 2);
            nibble!(hi, 12, 11, 3);
            nibble!(hi, 16, 12, 0);
            nibble!(hi, 20, 13, 1);
            nibble!(hi, 24, 14, 2);
            nibble!(hi, 28, 15, 3);
            left -= 1;
            if left == 0 || u + 1 == units {
                let sv = _mm512_load_ps(st.as_ptr().add(g * TBLOCK));
                for (mi, (t, a)) in tot.iter_mut().zip(acc.iter_mut()).enumerate() {
                    let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                    *t = _mm512_fmadd_ps(s, sv, *t);
                    if !signed {
                        // − s·z·Σx of the group
                        let xs = _mm512_set1_ps(xsum[(m0 + mi) * groups + g]);
                        *t = _mm512_fnmadd_ps(_mm512_load_ps(szt.as_ptr().add(g * TBLOCK)), xs, *t);
                    }
                    *a = [_mm512_setzero_ps(); 4];
                }
                left = upg;
                g += 1;
            }
        }
        u0 += nu;
    }
    for (i, t) in tot.iter().enumerate() {
        // Signed codes: a set bit is −1.
        let t = if signed { _mm512_sub_ps(_mm512_setzero_ps(), *t) } else { *t };
        let mut v = [0.0f32; 16];
        _mm512_storeu_ps(v.as_mut_ptr(), t);
        for (l, &vl) in v.iter().enumerate() {
            out[l * m + m0 + i] = vl;
        }
    }
}

/// Codes per 32-bit lane `C` of the odd-width (3/5/6/7-bit) matrix–vector path for `w`, or 0
/// where it does not apply (other widths, no VBMI, or group size / K not multiples of 16):
/// - 4 when the group size and K are multiples of 64: chunks of 64 codes (`8·b` bytes), the
///   activations in planar order with `per = 4` ([`planar`]);
/// - else 1 when they are multiples of 16: chunks of 16 codes (`2·b` bytes), natural order.
pub fn odd_gemv_lanes(w: &QWeights) -> usize {
    if !matches!(w.bits, 3 | 5 | 6 | 7) || !has_vbmi() {
        0
    } else if w.group_size.is_multiple_of(64) && w.k.is_multiple_of(64) {
        4
    } else if w.group_size.is_multiple_of(16) && w.k.is_multiple_of(16) {
        1
    } else {
        0
    }
}

/// Lane layout of a chunk of `16·c` codes of `b` bits, `c` consecutive codes per 32-bit lane:
/// lane `l` holds codes `[c·l, c·l + c)`, which start at bit `c·l·b` of the chunk. Returns the
/// `vpermb` index that fills lane `l` with the 4 bytes from byte `⌊c·l·b / 8⌋` on, and per code
/// slot `p < c` the right shift `(c·l·b mod 8) + p·b` that brings code `c·l + p` to bit 0 of its
/// lane (the code ends at bit ≤ 31: `4 + 4·7 = 32` at worst). Index bytes past the chunk pick up
/// bits of the next chunk (or zeros), always above the code: they are masked or ignored.
fn odd_layout(b: usize, c: usize) -> ([u8; 64], [[u32; 16]; 4]) {
    let mut idx = [0u8; 64];
    let mut sh = [[0u32; 16]; 4];
    for l in 0..16 {
        let bit = c * l * b;
        for t in 0..4 {
            idx[4 * l + t] = (bit / 8 + t) as u8;
        }
        for (p, s) in sh.iter_mut().enumerate().take(c) {
            s[l] = (bit % 8 + p * b) as u32;
        }
    }
    (idx, sh)
}

/// Rows `n0..` of the matrix–vector product for 3/5/6/7-bit codes; `out` is `[rows, m]`;
/// `c = odd_gemv_lanes(w)` (non-zero); `xp` the activations, in planar order (`per = 4`) when
/// `c == 4`. Per chunk of `16·c` codes: one load (32 or 64 bytes; masked where fewer remain in
/// the buffer), one `vpermb` ([`odd_layout`]), then per code slot a variable shift and
/// - 3 bits: `vpermps` from the group's table `code·s − s·z` (one FMA per group; 16 entries,
///   the 8 values twice: index bit 3 belongs to the next code),
/// - 5 bits: `vpermt2ps` from two such tables (codes 0–15 and 16–31, exactly 5 index bits),
/// - 6/7 bits: mask, convert, `q·s − s·z` in one FMA (a signed code `q` enters as its sign-flipped
///   unsigned form `q + 2^(b−1)` with `z = 2^(b−1)`: `s·z` is exact, so the FMA rounds once,
///   like `s·q`),
///
/// then one FMA per activation row (8 accumulators for a single activation row, 4 per row
/// otherwise; groups run in pairs on different accumulators so that even one chunk per group
/// feeds several FMA chains). `−s·z` is computed once per row and group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn gemv_odd_rows(w: &QWeights, xp: &[f32], m: usize, c: usize, n0: usize, out: &mut [f32]) {
    assert!(c != 0 && c == odd_gemv_lanes(w) && xp.len() >= m * w.k && n0 + out.len() / m.max(1) <= w.n);
    let mut m0 = 0;
    while m0 < m {
        let mb = (m - m0).min(MBLOCK);
        macro_rules! by_width {
            ($b:literal) => {
                match (c, mb) {
                    (4, 1) => odd_block::<$b, 4, 1>(w, xp, m, m0, n0, out),
                    (4, 2) => odd_block::<$b, 4, 2>(w, xp, m, m0, n0, out),
                    (4, 3) => odd_block::<$b, 4, 3>(w, xp, m, m0, n0, out),
                    (4, _) => odd_block::<$b, 4, 4>(w, xp, m, m0, n0, out),
                    (_, 1) => odd_block::<$b, 1, 1>(w, xp, m, m0, n0, out),
                    (_, 2) => odd_block::<$b, 1, 2>(w, xp, m, m0, n0, out),
                    (_, 3) => odd_block::<$b, 1, 3>(w, xp, m, m0, n0, out),
                    (_, _) => odd_block::<$b, 1, 4>(w, xp, m, m0, n0, out),
                }
            };
        }
        match w.bits {
            3 => by_width!(3),
            5 => by_width!(5),
            6 => by_width!(6),
            _ => by_width!(7),
        }
        m0 += mb;
    }
}

/// Activation rows `m0..m0 + MB` of [`gemv_odd_rows`] for `B`-bit codes, `C` codes per lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn odd_block<const B: usize, const C: usize, const MB: usize>(
    w: &QWeights,
    xp: &[f32],
    m: usize,
    m0: usize,
    n0: usize,
    out: &mut [f32],
) {
    let k = w.k;
    let ce = 16 * C;
    let cb = 2 * C * B;
    let nchunks = k / ce;
    let cpg = w.group_size / ce;
    let signed = w.signed();
    let (idx, shifts) = odd_layout(B, C);
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
    let mut sh = [_mm512_setzero_si512(); C];
    for (v, s) in sh.iter_mut().zip(&shifts) {
        *v = _mm512_loadu_si512(s.as_ptr() as *const _);
    }
    // Tables (3/5 bits): the value of every index (5 bits: `lo` for 0–15, `hi` for 16–31).
    let mut lo = [0.0f32; 16];
    let mut hi = [0.0f32; 16];
    for i in 0..16 {
        let val = |c: usize| {
            let c = c & ((1 << B) - 1);
            if signed && c >= 1 << (B - 1) { c as f32 - (1u32 << B) as f32 } else { c as f32 }
        };
        lo[i] = val(i);
        hi[i] = val(i + 16);
    }
    let (lo, hi) = (_mm512_loadu_ps(lo.as_ptr()), _mm512_loadu_ps(hi.as_ptr()));
    // 6/7 bits: code bits, XORed with the sign bit for signed codes (then `z = 2^(B−1)`).
    let cmask = _mm512_set1_epi32((1 << B) - 1);
    let flip = _mm512_set1_epi32(if signed { 1 << (B - 1) } else { 0 });
    let packed = w.packed;
    // Every index byte of `idx` is below 32 for 3-bit codes and for 16-code chunks: one 32-byte
    // load then suffices (fewer loads straddle two cache lines). Chunks starting at or before
    // `full_end` can be read with a full-width load.
    let narrow = B == 3 || C == 1;
    let full_end = packed.len().saturating_sub(if narrow { 32 } else { 64 });
    let lmask: __mmask64 = (1u64 << cb) - 1;
    let xr = xp.as_ptr().add(m0 * k);
    let groups = w.groups;
    // Zero points of signed codes: 0 for the tables, 2^(B−1) for 6/7 bits (see above).
    let zsigned = vec![if B >= 6 { (1u32 << (B - 1)) as f32 } else { 0.0 }; if signed { groups } else { 0 }];
    // −s·z of every group of the current row.
    let mut nsz = vec![0.0f32; groups];
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        let row_off = n * w.row_bytes;
        let srow = &w.scales[n * groups..(n + 1) * groups];
        let zrow = match w.zero_points {
            Some(z) => &z[n * groups..(n + 1) * groups],
            None => &zsigned[..],
        };
        for ((d, &s), &z) in nsz.iter_mut().zip(srow).zip(zrow) {
            *d = -(s * z);
        }
        // Accumulators per activation row: 8 for one row, 4 each for more (at most 16 in use).
        let mut acc = [[_mm512_setzero_ps(); 8]; MB];
        let nacc = if MB == 1 { 8 } else { 4 };
        let mut c = 0usize;
        // Chunk `$c` with tables `$t0`, `$t1`; code slot `p` goes to accumulator `(p + $a) % nacc`.
        macro_rules! chunk {
            ($c:expr, $a:expr, $t0:expr, $t1:expr) => {{
                let off = row_off + $c * cb;
                let src = packed.as_ptr().add(off);
                // Stream ahead (rows are contiguous; a prefetch never faults).
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_BYTES) as *const i8);
                let raw = if off > full_end {
                    _mm512_maskz_loadu_epi8(lmask, src as *const i8)
                } else if narrow {
                    // The upper 32 bytes are never indexed.
                    _mm512_castsi256_si512(_mm256_loadu_si256(src as *const _))
                } else {
                    _mm512_loadu_si512(src as *const _)
                };
                let v = _mm512_permutexvar_epi8(idx, raw);
                for (p, shp) in sh.iter().enumerate() {
                    let q = _mm512_srlv_epi32(v, *shp);
                    let wv = match B {
                        3 => _mm512_permutexvar_ps(q, $t0),
                        5 => _mm512_permutex2var_ps($t0, q, $t1),
                        _ => {
                            // (q & cmask) ^ flip
                            let q = _mm512_ternarylogic_epi32::<0x6A>(q, cmask, flip);
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), $t0, $t1)
                        }
                    };
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(xr.add(i * k + $c * ce + p * 16));
                        let s = (p + $a) % nacc;
                        a[s] = _mm512_fmadd_ps(xv, wv, a[s]);
                    }
                }
            }};
        }
        // Group `$g`, its code slots offset by `$a` (groups run in pairs with offsets 0 and 4).
        macro_rules! group {
            ($g:expr, $a:literal) => {{
                let (sv, nzv) = (_mm512_set1_ps(srow[$g]), _mm512_set1_ps(nsz[$g]));
                // 3/5 bits: t0 (t1) = the table(s) `code·s − s·z`; 6/7 bits: t0 = s, t1 = −s·z.
                let (t0, t1) = if B <= 5 {
                    (_mm512_fmadd_ps(lo, sv, nzv), _mm512_fmadd_ps(hi, sv, nzv))
                } else {
                    (sv, nzv)
                };
                let end = (c + cpg).min(nchunks);
                if C == 1 {
                    while c + 2 <= end {
                        chunk!(c, $a, t0, t1);
                        chunk!(c + 1, $a + 1, t0, t1);
                        c += 2;
                    }
                }
                while c < end {
                    chunk!(c, $a, t0, t1);
                    c += 1;
                }
            }};
        }
        let mut g = 0;
        while g + 2 <= groups {
            group!(g, 0);
            group!(g + 1, 4);
            g += 2;
        }
        if g < groups {
            group!(g, 0);
        }
        for (i, a) in acc.iter().enumerate() {
            let t = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])),
                _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7])),
            );
            o[m0 + i] = _mm512_reduce_add_ps(t);
        }
    }
}

/// Bits set in the low `b` bits of every byte: the `pdep` mask that spreads 8 codes of `b` bits
/// (one little-endian word of `8·b` bits) into 8 bytes.
#[inline(always)]
const fn spread_mask(b: u32) -> u64 {
    0x0101_0101_0101_0101u64 * ((1u64 << b) - 1)
}

/// Whether BMI2 `pdep` is fast here: it is microcoded (tens to hundreds of cycles) on AMD
/// processors before Zen 3 (family 0x19), where the portable loop is faster.
pub fn fast_pdep() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        // SAFETY: cpuid leaves 0 and 1 exist on every x86-64 processor (the intrinsic is safe
        // in recent Rust, unsafe in older releases).
        #[allow(unused_unsafe)]
        let (v, f) = unsafe { (__cpuid(0), __cpuid(1)) };
        let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163); // "AuthenticAMD"
        let family = ((f.eax >> 8) & 0xF) + if (f.eax >> 8) & 0xF == 0xF { (f.eax >> 20) & 0xFF } else { 0 };
        !amd || family >= 0x19
    })
}

/// Unpack one row of 3/5/6/7-bit codes with BMI2 `pdep`, 8 codes at a time (see
/// [`crate::pack::unpack_odd_with`]).
#[target_feature(enable = "bmi2")]
pub unsafe fn unpack_odd_bmi2(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
    use crate::pack::unpack_odd_with;
    debug_assert!(matches!(bits, 3 | 5 | 6 | 7));
    match bits {
        3 => unpack_odd_with::<3>(src, signed, dst, |v| _pdep_u64(v, spread_mask(3))),
        5 => unpack_odd_with::<5>(src, signed, dst, |v| _pdep_u64(v, spread_mask(5))),
        6 => unpack_odd_with::<6>(src, signed, dst, |v| _pdep_u64(v, spread_mask(6))),
        _ => unpack_odd_with::<7>(src, signed, dst, |v| _pdep_u64(v, spread_mask(7))),
    }
}

/// Unpack one row of `dst.len()` codes of `bits` bits (3/5/6/7) from `src`, 64 codes (`8·b`
/// bytes) at a time: `vpermb` gives 64-bit lane `j` the bytes `[j·b, j·b + 8)` (codes
/// `8j..8j + 8`), `vpmultishiftqb` takes byte `t` of the lane from bit `t·b`, and the code bits
/// are masked (signed: `(v ^ h) − h` with `h` the sign bit sign-extends each byte). Loads and
/// stores are masked to the bytes of `src` and the codes of `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn unpack_odd_vbmi(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
    assert!(matches!(bits, 3 | 5 | 6 | 7));
    let b = bits as usize;
    let mut idx = [0u8; 64];
    let mut ctl = [0u8; 64];
    for j in 0..8 {
        for t in 0..8 {
            idx[8 * j + t] = (j * b + t) as u8;
            ctl[8 * j + t] = (t * b) as u8;
        }
    }
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
    let ctl = _mm512_loadu_si512(ctl.as_ptr() as *const _);
    let cmask = _mm512_set1_epi8(((1u32 << b) - 1) as i8);
    let h = _mm512_set1_epi8(if signed { (1u32 << (b - 1)) as i8 } else { 0 });
    let n = dst.len();
    let mut i = 0usize;
    while i < n {
        let off = i / 8 * b;
        if off >= src.len() {
            break; // only with a short `src` (callers pass full rows): leave the rest as is
        }
        let avail = (src.len() - off).min(8 * b);
        let raw = _mm512_maskz_loadu_epi8((1u64 << avail) - 1, src.as_ptr().add(off) as *const i8);
        let v = _mm512_multishift_epi64_epi8(ctl, _mm512_permutexvar_epi8(idx, raw));
        // (v & cmask) ^ h, then − h: sign extension (h = 0 for unsigned codes).
        let v = _mm512_sub_epi8(_mm512_ternarylogic_epi32::<0x6A>(v, cmask, h), h);
        let cnt = (n - i).min(64);
        let d = dst.as_mut_ptr().add(i) as *mut i8;
        if cnt == 64 {
            _mm512_storeu_si512(d as *mut _, v);
        } else {
            _mm512_mask_storeu_epi8(d, (1u64 << cnt) - 1, v);
        }
        i += 64;
    }
}

/// Spike masks in the nibble order of 4-bit codes, as bytes (0xFF where a spike occurred): for
/// each 64-element unit, 32 bytes for the even elements (low nibbles), then 32 for the odd ones.
pub fn nibble_masks(spikes_row: &[u8], k: usize) -> Vec<[u8; 64]> {
    (0..k / 64)
        .map(|u| {
            let word = u64::from_le_bytes(spikes_row[8 * u..8 * u + 8].try_into().unwrap());
            let mut m = [0u8; 64];
            for i in 0..32 {
                m[i] = 0u8.wrapping_sub(((word >> (2 * i)) & 1) as u8);
                m[32 + i] = 0u8.wrapping_sub(((word >> (2 * i + 1)) & 1) as u8);
            }
            m
        })
        .collect()
}

/// Rows `n0..` of the row-wise spike accumulation for 4-bit codes; `out` is `[rows, m]`.
/// `masks[mi]` are the nibble-order spike masks of spike row `mi`, `counts` the spikes per
/// (row, group). Per group: the nibbles are ANDed with the spike byte masks and summed with
/// `vpsadbw` (signed codes are summed as `code XOR 8` and corrected by `8 · count`), then the
/// integer sum is scaled once. No multiply touches a code.
#[target_feature(enable = "avx2")]
pub unsafe fn spike4_rows(
    w: &QWeights,
    masks: &[Vec<[u8; 64]>],
    counts: &[u32],
    n0: usize,
    out: &mut [f32],
    group_value: impl Fn(f32, Option<f32>, i32, u32) -> f32,
) {
    let m = masks.len();
    let groups = w.groups;
    let signed = w.signed();
    let low = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(if signed { 0x88u8 as i8 } else { 0 });
    let zero = _mm256_setzero_si256();
    let units_per_group = w.group_size / 64;
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        let row = w.row(n).as_ptr();
        for (mi, om) in o.iter_mut().enumerate() {
            let mk = &masks[mi];
            let mut total = 0.0f32;
            for g in 0..groups {
                let count = counts[mi * groups + g];
                if count == 0 {
                    continue;
                }
                let u0 = g * units_per_group;
                let u1 = (u0 + units_per_group).min(mk.len());
                let mut acc = _mm256_setzero_si256();
                for (u, mb) in mk[u0..u1].iter().enumerate() {
                    let b = _mm256_xor_si256(_mm256_loadu_si256(row.add((u0 + u) * 32) as *const __m256i), flip);
                    let ml = _mm256_loadu_si256(mb.as_ptr() as *const __m256i);
                    let mh = _mm256_loadu_si256(mb.as_ptr().add(32) as *const __m256i);
                    let lo = _mm256_and_si256(_mm256_and_si256(b, low), ml);
                    let hi = _mm256_and_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b), low), mh);
                    acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_sad_epu8(lo, zero), _mm256_sad_epu8(hi, zero)));
                }
                let h = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
                let raw = _mm_cvtsi128_si64(h) + _mm_extract_epi64::<1>(h);
                let sum = if signed { raw - 8 * count as i64 } else { raw } as i32;
                let z = w.zero_points.map(|z| z[n * groups + g]);
                total += group_value(w.scales[n * groups + g], z, sum, count);
            }
            *om = total;
        }
    }
}
