//! `lowbit_matmul`: real-valued activations `[M, K]` × packed low-bit weights `[N, K]` → `[M, N]`,
//! dequantizing on the fly; the full-precision weight matrix never exists in memory.
//!
//! Two schedules, chosen by the batch size M (both deterministic for any thread count):
//! - matrix–vector (M < [`GEMM_MIN_M`]): each task owns a few weight rows; a row is decoded once
//!   into a K-byte scratch and dotted with every activation row (16-lane float accumulators,
//!   scaled per group, one horizontal sum per output). At the AVX-512 level, the kernels of
//!   `x86.rs` do the same work straight from the packed rows for every width where the group
//!   size and K are multiples of their chunk (`gemv_avx512`; 3/5/6/7 bits also need VBMI).
//! - matrix–matrix: weight rows are dequantized a block at a time into a small f32 panel that fits
//!   in cache, and `matrixmultiply::sgemm` multiplies the activations by it.

use crate::error::{shape_err, Result};
use crate::qweights::QWeights;
use crate::simd::multiversion;
use rayon::prelude::*;

/// Batch size from which the matrix–matrix schedule is used.
pub const GEMM_MIN_M: usize = 8;
/// Multiply-adds per task in the matrix–vector schedule (enough work per task that rayon's
/// splitting and stealing stay small next to it; small matrices then run as a few tasks).
const GEMV_WORK_PER_TASK: usize = 1 << 16;

/// Weight rows per task: at least 8, about GEMV_WORK_PER_TASK multiply-adds, and at least
/// 2 tasks per pool thread when the matrix allows it.
fn gemv_rows_per_task(n: usize, k: usize, m: usize) -> usize {
    let by_work = GEMV_WORK_PER_TASK / (k * m).max(1);
    let by_balance = n.div_ceil(2 * rayon::current_num_threads());
    by_work.min(by_balance).max(8)
}
/// Float lanes of the accumulators (fixes the summation order on every ISA).
const LANES: usize = 16;

/// `x · dequant(W)ᵀ` for `x` row-major `[m, w.k]`. Returns `[m, w.n]` row-major.
pub fn lowbit_matmul(x: &[f32], m: usize, w: &QWeights) -> Result<Vec<f32>> {
    if x.len() != m * w.k {
        return Err(shape_err("x", format!("({m}, {}) to match packed", w.k), format!("{} elements", x.len())));
    }
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    if k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    if m < GEMM_MIN_M {
        Ok(gemv(x, m, w))
    } else {
        Ok(gemm(x, m, w))
    }
}

/// Per activation row and group: the sum of the activations (for zero points).
fn group_sums(x: &[f32], m: usize, w: &QWeights) -> Vec<f32> {
    let mut s = vec![0.0f32; m * w.groups];
    for mi in 0..m {
        let xr = &x[mi * w.k..(mi + 1) * w.k];
        for g in 0..w.groups {
            let (a, b) = w.group_range(g);
            s[mi * w.groups + g] = xr[a..b].iter().sum();
        }
    }
    s
}

fn gemv(x: &[f32], m: usize, w: &QWeights) -> Vec<f32> {
    let xsum = if w.signed() { Vec::new() } else { group_sums(x, m, w) };
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512 {
        if let Some(y) = gemv_avx512(x, m, w, &xsum) {
            return y;
        }
    }
    gemv_portable(x, m, w, &xsum)
}

/// The AVX-512 matrix–vector kernels, where one applies to `w` (the caller checked that the
/// AVX-512 level is in use); `None` otherwise.
#[cfg(target_arch = "x86_64")]
fn gemv_avx512(x: &[f32], m: usize, w: &QWeights, xsum: &[f32]) -> Option<Vec<f32>> {
    use crate::x86;
    let odd_lanes = x86::odd_gemv_lanes(w);
    if !(x86::gemv1_applies(w) || x86::lut_gemv_applies(w) || x86::gemv8_applies(w) || odd_lanes != 0) {
        return None;
    }
    // Output transposed ([N, M]) so that each task writes one contiguous chunk.
    let mut out_t = vec![0.0f32; w.n * m];
    let rpt = gemv_rows_per_task(w.n, w.k, m);
    if x86::gemv1_table_applies(w) && w.n >= x86::TBLOCK {
        // Blocks of TBLOCK rows (tasks start on block boundaries, so which rows run in the
        // table kernel depends on N alone); the last N % TBLOCK rows take the masked kernel.
        // SAFETY: AVX-512 F/BW/VL present (isa() checked by the caller); K % 64 == 0.
        let tables = unsafe { x86::act_tables(x, m, w.k) };
        let tables = tables.as_slice();
        let xa = x86::AlignedX::copy(x);
        let xa = xa.as_slice();
        let rpt = rpt.next_multiple_of(x86::TBLOCK);
        out_t.par_chunks_mut(rpt * m).enumerate().for_each(|(task, chunk)| {
            let n0 = task * rpt;
            let full = chunk.len() / m / x86::TBLOCK * x86::TBLOCK;
            let (blocks, rest) = chunk.split_at_mut(full * m);
            // SAFETY: AVX-512 F/BW/VL present (isa() checked by the caller);
            // gemv1_table_applies (hence gemv1_applies) checked; shapes validated by QWeights and
            // lowbit_matmul; `blocks` holds whole blocks.
            unsafe {
                x86::gemv1_table_rows(w, tables, m, xsum, n0, blocks);
                x86::gemv1_rows(w, xa, m, xsum, n0 + full, rest);
            }
        });
        return Some(transpose(&out_t, w.n, m));
    }
    let tasks = out_t.par_chunks_mut(rpt * m).enumerate();
    if x86::gemv1_applies(w) {
        let xa = x86::AlignedX::copy(x);
        let x = xa.as_slice();
        tasks.for_each(|(task, chunk)| {
            // SAFETY: AVX-512 F/BW/VL present (isa() checked by the caller); gemv1_applies
            // checked; shapes validated by QWeights and lowbit_matmul.
            unsafe { x86::gemv1_rows(w, x, m, xsum, task * rpt, chunk) }
        });
    } else if x86::lut_gemv_applies(w) {
        let xp = x86::planar(x, m, w.k, (8 / w.bits) as usize);
        let xp = xp.as_slice();
        tasks.for_each(|(task, chunk)| {
            // SAFETY: as above, lut_gemv_applies checked.
            unsafe { x86::gemv_lut_rows(w, xp, m, task * rpt, chunk) }
        });
    } else if x86::gemv8_applies(w) {
        tasks.for_each(|(task, chunk)| {
            // SAFETY: as above, gemv8_applies checked.
            unsafe { x86::gemv8_rows(w, x, m, xsum, task * rpt, chunk) }
        });
    } else {
        let c = odd_lanes;
        let xp = if c == 4 { x86::planar(x, m, w.k, 4) } else { x86::AlignedX::copy(x) };
        let xp = xp.as_slice();
        tasks.for_each(|(task, chunk)| {
            // SAFETY: as above, and odd_gemv_lanes(w) != 0 implies VBMI is present; xp is
            // [m, K] in the order the kernel expects for c.
            unsafe { x86::gemv_odd_rows(w, xp, m, c, task * rpt, chunk) }
        });
    }
    Some(transpose(&out_t, w.n, m))
}

/// The portable matrix–vector schedule (any ISA, any shape): rows decoded into a scratch, then
/// dotted with every activation row.
fn gemv_portable(x: &[f32], m: usize, w: &QWeights, xsum: &[f32]) -> Vec<f32> {
    let mut out_t = vec![0.0f32; w.n * m];
    let rpt = gemv_rows_per_task(w.n, w.k, m);
    out_t
        .par_chunks_mut(rpt * m)
        .enumerate()
        .for_each_init(
            || vec![0i8; w.k],
            |scratch, (task, chunk)| gemv_rows(w, x, m, xsum, task * rpt, chunk, scratch),
        );
    transpose(&out_t, w.n, m)
}

multiversion!(fn gemv_rows(w: &QWeights, x: &[f32], m: usize, xsum: &[f32], n0: usize, out: &mut [f32], scratch: &mut [i8]) => gemv_rows_impl);

#[inline(always)]
fn gemv_rows_impl(w: &QWeights, x: &[f32], m: usize, xsum: &[f32], n0: usize, out: &mut [f32], scratch: &mut [i8]) {
    let k = w.k;
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        w.decode_row(n, scratch);
        let scales = &w.scales[n * w.groups..(n + 1) * w.groups];
        for (mi, om) in o.iter_mut().enumerate() {
            let xr = &x[mi * k..(mi + 1) * k];
            let mut lanes = [0.0f32; LANES];
            let mut tail = 0.0f32;
            for (g, &s) in scales.iter().enumerate() {
                let (a, b) = w.group_range(g);
                let (acc, t) = if w.signed() {
                    dot_lanes(&xr[a..b], &scratch[a..b], |c| c as f32)
                } else {
                    dot_lanes(&xr[a..b], &scratch[a..b], |c| c as u8 as f32)
                };
                for i in 0..LANES {
                    lanes[i] += s * acc[i];
                }
                tail += s * t;
                if let Some(z) = w.zero_points {
                    tail -= s * (z[n * w.groups + g] * xsum[mi * w.groups + g]);
                }
            }
            *om = reduce_lanes(&lanes) + tail;
        }
    }
}

/// Lane-wise dot product of `x` and decoded codes: (per-lane partial sums, sum of the tail).
#[inline(always)]
fn dot_lanes(x: &[f32], q: &[i8], val: impl Fn(i8) -> f32) -> ([f32; LANES], f32) {
    let mut acc = [0.0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let qc = q.chunks_exact(LANES);
    let (xt, qt) = (xc.remainder(), qc.remainder());
    for (xa, qa) in xc.zip(qc) {
        for i in 0..LANES {
            acc[i] += xa[i] * val(qa[i]);
        }
    }
    let mut tail = 0.0f32;
    for (&a, &c) in xt.iter().zip(qt) {
        tail += a * val(c);
    }
    (acc, tail)
}

/// Pairwise sum of the lanes in a fixed order.
#[inline(always)]
fn reduce_lanes(l: &[f32; LANES]) -> f32 {
    let mut h = [0.0f32; LANES / 2];
    for i in 0..LANES / 2 {
        h[i] = l[i] + l[i + LANES / 2];
    }
    let mut q = [0.0f32; LANES / 4];
    for i in 0..LANES / 4 {
        q[i] = h[i] + h[i + LANES / 4];
    }
    (q[0] + q[2]) + (q[1] + q[3])
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Weight rows per task of the matrix–matrix schedule.
const PANEL_ROWS: usize = 128;
/// Input columns per dequantized panel (PANEL_ROWS × PANEL_K f32 = 256 KiB, in L2).
const PANEL_K: usize = 512;

fn gemm(x: &[f32], m: usize, w: &QWeights) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    let nb = PANEL_ROWS;
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(nb))
        .into_par_iter()
        .map_init(
            || (vec![0i8; nb * k], vec![0.0f32; nb * PANEL_K]),
            |(codes, panel), b| {
                let n0 = b * nb;
                let rows = nb.min(n - n0);
                for r in 0..rows {
                    w.decode_row(n0 + r, &mut codes[r * k..(r + 1) * k]);
                }
                let mut c = vec![0.0f32; m * rows];
                for k0 in (0..k).step_by(PANEL_K) {
                    let kc = PANEL_K.min(k - k0);
                    dequant_panel(w, codes, n0, rows, k0, kc, panel);
                    // SAFETY: x is [m, k] row-major (columns k0..k0+kc start at x + k0, row
                    // stride k); the panel holds rows × kc weights, read as its transpose
                    // [kc, rows] (row stride 1, column stride kc); c is [m, rows]. beta = 1
                    // accumulates the k-panels in order.
                    unsafe {
                        matrixmultiply::sgemm(
                            m, kc, rows, 1.0,
                            x.as_ptr().add(k0), k as isize, 1,
                            panel.as_ptr(), 1, kc as isize,
                            1.0,
                            c.as_mut_ptr(), rows as isize, 1,
                        );
                    }
                }
                (n0, c)
            },
        )
        .collect();
    let mut out = vec![0.0f32; m * n];
    for (n0, c) in blocks {
        let rows = c.len() / m;
        for mi in 0..m {
            out[mi * n + n0..mi * n + n0 + rows].copy_from_slice(&c[mi * rows..(mi + 1) * rows]);
        }
    }
    out
}

multiversion!(fn dequant_panel(w: &QWeights, codes: &[i8], n0: usize, rows: usize, k0: usize, kc: usize, panel: &mut [f32]) => dequant_panel_impl);

/// Dequantize columns `k0..k0+kc` of rows `n0..n0+rows` (codes already decoded, `[rows, K]`)
/// into `panel` (`[rows, kc]`).
#[inline(always)]
fn dequant_panel_impl(w: &QWeights, codes: &[i8], n0: usize, rows: usize, k0: usize, kc: usize, panel: &mut [f32]) {
    let k = w.k;
    for r in 0..rows {
        let n = n0 + r;
        let src = &codes[r * k..(r + 1) * k];
        let dst = &mut panel[r * kc..(r + 1) * kc];
        let mut col = k0;
        while col < k0 + kc {
            let g = col / w.group_size;
            let end = ((g + 1) * w.group_size).min(k0 + kc);
            let s = w.scales[n * w.groups + g];
            let (d, c) = (&mut dst[col - k0..end - k0], &src[col..end]);
            match w.zero_points {
                None => {
                    for (d, &c) in d.iter_mut().zip(c) {
                        *d = s * c as f32;
                    }
                }
                Some(z) => {
                    let z = z[n * w.groups + g];
                    for (d, &c) in d.iter_mut().zip(c) {
                        *d = s * (c as u8 as f32 - z);
                    }
                }
            }
            col = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{code_range, pack_bits, row_bytes};

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Zero points of a test case (asymmetric cases only).
    #[derive(Clone, Copy)]
    enum Zeros {
        /// Random integers in the code range.
        Int,
        /// Random multiples of 1/4 in the code range (not exact codes).
        Frac,
        /// 0.5 everywhere (the sign binarization export for 1-bit codes).
        Half,
    }

    /// A random test case: codes, packed weights, scales, zero points, activations.
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        bits: u32,
        gs: usize,
        asym: bool,
        codes: Vec<u8>,
        packed: Vec<u8>,
        scales: Vec<f32>,
        zeros: Vec<f32>,
        x: Vec<f32>,
    }

    impl Case {
        fn new(m: usize, n: usize, k: usize, bits: u32, gs: usize, asym: bool, zmode: Zeros) -> Self {
            let mut seed = (m * 31 + n * 7 + k * 3 + bits as usize + gs) as u64;
            let (lo, hi) = code_range(bits, !asym);
            let codes: Vec<u8> = (0..n * k)
                .map(|_| (lo + (lcg(&mut seed) as i64 % (hi - lo + 1))) as i8 as u8)
                .collect();
            let packed = pack_bits(&codes, n, k, bits as i64, !asym).unwrap();
            let groups = k.div_ceil(gs);
            let scales: Vec<f32> = (0..n * groups).map(|_| (lcg(&mut seed) % 1000) as f32 / 1e4 + 0.01).collect();
            let zeros: Vec<f32> = (0..n * groups)
                .map(|_| match zmode {
                    Zeros::Int => (lcg(&mut seed) % (1 << bits)) as f32,
                    Zeros::Frac => (lcg(&mut seed) % (4 << bits)) as f32 / 4.0,
                    Zeros::Half => 0.5,
                })
                .collect();
            let x: Vec<f32> = (0..m * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            Self { m, n, k, bits, gs, asym, codes, packed, scales, zeros, x }
        }

        fn weights(&self) -> QWeights<'_> {
            let (n, k, groups) = (self.n, self.k, self.k.div_ceil(self.gs));
            let zp = if self.asym { Some((self.zeros.as_slice(), (n, groups))) } else { None };
            let packed_shape = (n, row_bytes(k, self.bits));
            QWeights::new(&self.packed, packed_shape, &self.scales, (n, groups), zp, k, self.bits as i64, self.gs as i64)
                .unwrap()
        }

        /// Float64 value of output (mi, ni) and its error scale `Σ |x·w|`.
        fn want(&self, mi: usize, ni: usize) -> (f64, f64) {
            let (k, groups) = (self.k, self.k.div_ceil(self.gs));
            let (mut want, mut mag) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let g = kk / self.gs;
                let code = self.codes[ni * k + kk];
                let c = if self.asym { code as f64 - self.zeros[ni * groups + g] as f64 } else { code as i8 as f64 };
                let wv = self.scales[ni * groups + g] as f64 * c;
                want += self.x[mi * k + kk] as f64 * wv;
                mag += (self.x[mi * k + kk] as f64 * wv).abs();
            }
            (want, mag)
        }

        /// `y` ([m, n]) agrees with the float64 evaluation within `1e-5 · Σ |x·w|`.
        fn assert_close(&self, y: &[f32], what: &str) {
            for mi in 0..self.m {
                for ni in 0..self.n {
                    let (want, mag) = self.want(mi, ni);
                    let got = y[mi * self.n + ni] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag + 1e-6,
                        "{what}: m{} n{} k{} bits{} g{} asym{}: out ({mi}, {ni}) {got} vs {want}",
                        self.m, self.n, self.k, self.bits, self.gs, self.asym
                    );
                }
            }
        }
    }

    /// Random codes/scales/x; compare both schedules with a float64 evaluation.
    fn check(m: usize, n: usize, k: usize, bits: u32, gs: usize, asym: bool) {
        let c = Case::new(m, n, k, bits, gs, asym, Zeros::Int);
        let y = lowbit_matmul(&c.x, m, &c.weights()).unwrap();
        c.assert_close(&y, "lowbit_matmul");
    }

    /// The shapes of the matrix–vector fast paths (and their fallbacks): K = 768 and 3072, a K
    /// that is a multiple of 16 but not of 64 (784), one that is neither (100); group sizes
    /// 16/64/128/K; every width; M = 1, 2, 7; 37 rows: two blocks of the 1-bit table kernel and
    /// 5 rows for its remainder kernel, and the chunks at the end of the buffer take the masked
    /// loads.
    fn fast_path_cases(mut f: impl FnMut(&Case)) {
        for &k in &[768usize, 3072, 784, 100] {
            for &gs in &[16usize, 64, 128, k] {
                for bits in 1..=8u32 {
                    for &m in &[1usize, 2, 7] {
                        for (asym, z) in [(false, Zeros::Int), (true, Zeros::Int), (true, Zeros::Frac)] {
                            f(&Case::new(m, 37, k, bits, gs, asym, z));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fast_paths_match_float64() {
        fast_path_cases(|c| {
            let y = lowbit_matmul(&c.x, c.m, &c.weights()).unwrap();
            c.assert_close(&y, "lowbit_matmul");
        });
    }

    #[test]
    fn fast_paths_match_portable() {
        // Whichever path `gemv` takes (AVX-512 kernels where the CPU has them) against the
        // portable loops, within the float64 tolerance of both.
        fast_path_cases(|c| {
            let w = c.weights();
            let xsum = if w.signed() { Vec::new() } else { group_sums(&c.x, c.m, &w) };
            let fast = gemv(&c.x, c.m, &w);
            let portable = gemv_portable(&c.x, c.m, &w, &xsum);
            c.assert_close(&portable, "portable");
            for (i, (&a, &b)) in fast.iter().zip(&portable).enumerate() {
                let (_, mag) = c.want(i / c.n, i % c.n);
                assert!(
                    ((a - b) as f64).abs() <= 1e-5 * mag + 1e-6,
                    "k{} bits{} g{} m{} asym{}: out {i}: fast {a} vs portable {b}",
                    c.k, c.bits, c.gs, c.m, c.asym
                );
            }
        });
    }

    #[test]
    fn one_bit_sign_binarization() {
        // Unsigned 1-bit codes with z = 0.5 (weights ±s/2) and signed ones ({0, −1}).
        for &(m, k, gs) in &[(1, 768, 64), (3, 768, 16), (2, 3072, 3072), (1, 784, 112)] {
            let c = Case::new(m, 21, k, 1, gs, true, Zeros::Half);
            c.assert_close(&lowbit_matmul(&c.x, m, &c.weights()).unwrap(), "z = 0.5");
            let c = Case::new(m, 21, k, 1, gs, false, Zeros::Int);
            c.assert_close(&lowbit_matmul(&c.x, m, &c.weights()).unwrap(), "signed");
        }
    }

    #[test]
    fn independent_of_thread_count() {
        for bits in 1..=8u32 {
            for &(m, k, gs) in &[(1, 768, 64), (3, 784, 16), (8, 256, 64)] {
                let c = Case::new(m, 200, k, bits, gs, bits % 2 == 1, Zeros::Frac);
                let w = c.weights();
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| lowbit_matmul(&c.x, m, &w).unwrap())
                };
                let one = run(1);
                for t in [2, 3, 5] {
                    let y = run(t);
                    assert!(
                        one.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "bits {bits}, m {m}, k {k}: {t} threads differ from 1"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_float64_both_schedules() {
        for &(m, n, k) in &[(1, 5, 64), (3, 17, 100), (9, 33, 129), (16, 40, 256)] {
            for bits in 1..=8 {
                for &gs in &[1, 7, 32, 64, k] {
                    check(m, n, k, bits, gs, false);
                    check(m, n, k, bits, gs, true);
                }
            }
        }
    }

    #[test]
    fn empty_shapes() {
        let w = QWeights::new(&[], (0, 2), &[], (0, 1), None, 4, 4, 4).unwrap();
        assert_eq!(lowbit_matmul(&[0.0; 8], 2, &w).unwrap().len(), 0);
        let w = QWeights::new(&[], (3, 0), &[], (3, 0), None, 0, 4, 4).unwrap();
        assert_eq!(lowbit_matmul(&[], 2, &w).unwrap(), vec![0.0; 6]);
    }

    #[test]
    fn rejects_mismatched_shapes() {
        assert!(QWeights::new(&[0; 6], (2, 3), &[1.0; 2], (2, 1), None, 8, 4, 8).is_err());
        assert!(QWeights::new(&[0; 8], (2, 4), &[1.0; 2], (2, 1), None, 8, 4, 4).is_err());
        assert!(QWeights::new(&[0; 8], (2, 4), &[1.0; 4], (2, 2), None, 8, 4, 0).is_err());
        let w = QWeights::new(&[0; 8], (2, 4), &[1.0; 2], (2, 1), None, 8, 4, 8).unwrap();
        assert!(lowbit_matmul(&[0.0; 7], 1, &w).is_err());
    }
}
