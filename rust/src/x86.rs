//! Hand-written x86 inner loops for the hot cases (used when `simd::isa()` allows them):
//!
//! - matrix–vector with 1-, 2- or 4-bit codes: a 16-entry float table per group holds the
//!   dequantized value of every code (`scale · (code − zero)`), and `vpermps` looks the codes up
//!   straight from the packed bytes. The activations are permuted once per call into "planar"
//!   order so that the codes of one bit position in a byte line up with contiguous activations.
//! - matrix–vector with 8-bit codes: widen, convert, multiply-add per group, scale per group.
//! - spike accumulation with 4-bit codes (AVX2 suffices): nibbles are selected by the spike
//!   byte mask (AND) and summed with `vpsadbw`: integer adds only.
//!
//! Each requires the group size and K to be multiples of the chunk the loop consumes; callers
//! check [`lut_gemv_applies`], [`gemv8_applies`] and [`spike4_applies`] and fall back to the
//! portable loops otherwise.

#![allow(clippy::missing_safety_doc)]

use crate::qweights::QWeights;
use std::arch::x86_64::*;

/// Elements per 16-byte chunk of `bits`-bit codes.
#[inline]
fn chunk_elems(bits: u32) -> usize {
    16 * (8 / bits as usize)
}

pub fn lut_gemv_applies(w: &QWeights) -> bool {
    matches!(w.bits, 1 | 2 | 4) && w.group_size % chunk_elems(w.bits) == 0 && w.k % chunk_elems(w.bits) == 0
}

pub fn gemv8_applies(w: &QWeights) -> bool {
    w.bits == 8 && w.group_size % 16 == 0 && w.k % 16 == 0
}

pub fn spike4_applies(w: &QWeights) -> bool {
    w.bits == 4 && w.group_size % 64 == 0 && w.k % 64 == 0
}

/// Planar order: inside each chunk of `16·per` activations, plane `p` (elements `per·i + p`)
/// becomes the contiguous run `[16p, 16p + 16)`.
pub fn planar(x: &[f32], m: usize, k: usize, bits: u32) -> Vec<f32> {
    let per = (8 / bits) as usize;
    let ce = 16 * per;
    let mut xp = vec![0.0f32; m * k];
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
    xp
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
