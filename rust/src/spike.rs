//! `spike_matmul`: binary spikes (bit-packed `[M, ceil(K/8)]`) × packed low-bit weights `[N, K]`.
//!
//! Spike accumulation: for each output and weight group the integer codes of the columns that
//! spiked are added (integers, no multiply), the zero point is taken off once per spike counted,
//! and the group's integer sum is scaled once: `y[m,n] = Σ_g s[n,g] · (Σ_{k∈g, spike} q[n,k] −
//! z[n,g]·count[m,g])`, groups summed in order. Groups without a spike are skipped.
//!
//! Two schedules with bit-identical results:
//! - row-wise (M < [`TILE_MIN_M`]): a weight row is decoded once, and each group's codes are
//!   summed under a byte mask of the spikes (AND + add, vectorized).
//! - tiled (larger M): a block of [`TILE`] weight rows is decoded into a transposed tile
//!   `[K, TILE]`; for each spike row, only the active columns are visited and their `TILE`
//!   codes are added to integer accumulators. Work grows with the firing rate.

use crate::error::{shape_err, Result};
use crate::pack::row_bytes;
use crate::qweights::QWeights;
use crate::simd::multiversion;
use rayon::prelude::*;

/// Batch size from which the tiled schedule is used.
pub const TILE_MIN_M: usize = 8;
/// Weight rows per tile.
const TILE: usize = 64;
/// Active columns summed in 16-bit lanes before widening (128 · 255 < 2^15).
const I16_RUN: usize = 128;
/// Weight rows per task in the row-wise schedule.
const ROWS_PER_TASK: usize = 16;

/// The spikes of one call, decoded once and shared by every task.
struct Spikes {
    m: usize,
    k: usize,
    groups: usize,
    /// Spike counts per (row, group).
    counts: Vec<u32>,
    /// Row-wise schedule: `[M, K]` byte masks (0xFF where a spike occurred).
    masks: Vec<u8>,
    /// Tiled schedule: active column indices of each row, and per row the offsets of each
    /// group's indices (`G + 1` entries).
    active: Vec<Vec<u32>>,
    offsets: Vec<Vec<u32>>,
    /// AVX-512 4-bit row-wise path: per row, the spike masks in nibble order.
    nibbles: Vec<Vec<[u8; 64]>>,
}

impl Spikes {
    fn new(spikes: &[u8], m: usize, w: &QWeights, tiled: bool) -> Self {
        let (k, groups) = (w.k, w.groups);
        let sb = row_bytes(k, 1);
        let bit = |mi: usize, kk: usize| (spikes[mi * sb + kk / 8] >> (kk % 8)) & 1 == 1;
        let mut counts = vec![0u32; m * groups];
        let mut masks = Vec::new();
        let mut active = Vec::new();
        let mut offsets = Vec::new();
        if tiled {
            for mi in 0..m {
                let mut idx = Vec::new();
                let mut off = Vec::with_capacity(groups + 1);
                for g in 0..groups {
                    off.push(idx.len() as u32);
                    let (a, b) = w.group_range(g);
                    for kk in a..b {
                        if bit(mi, kk) {
                            idx.push(kk as u32);
                        }
                    }
                    counts[mi * groups + g] = idx.len() as u32 - off[g];
                }
                off.push(idx.len() as u32);
                active.push(idx);
                offsets.push(off);
            }
        } else {
            for mi in 0..m {
                for kk in 0..k {
                    if bit(mi, kk) {
                        counts[mi * groups + kk / w.group_size] += 1;
                    }
                }
            }
        }
        // Row-wise schedule: the x86 4-bit path reads nibble-order masks, the portable one
        // per-column byte masks; build only the one that will be used.
        let mut nibbles = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if !tiled && use_nibble_path(w) {
            nibbles = (0..m).map(|mi| crate::x86::nibble_masks(&spikes[mi * sb..(mi + 1) * sb], k)).collect();
        }
        if !tiled && nibbles.is_empty() {
            masks = vec![0u8; m * k];
            for mi in 0..m {
                for kk in 0..k {
                    if bit(mi, kk) {
                        masks[mi * k + kk] = 0xFF;
                    }
                }
            }
        }
        Spikes { m, k, groups, counts, masks, active, offsets, nibbles }
    }
}

/// `S · dequant(W)ᵀ` for `spikes` bit-packed `[m, ceil(w.k/8)]`. Bits past K are ignored.
pub fn spike_matmul(spikes: &[u8], m: usize, w: &QWeights) -> Result<Vec<f32>> {
    let sb = row_bytes(w.k, 1);
    if spikes.len() != m * sb {
        return Err(shape_err(
            "spikes",
            format!("({m}, {sb}) = (M, ceil(K/8)) bytes for K = {}", w.k),
            format!("{} bytes", spikes.len()),
        ));
    }
    let n = w.n;
    if m == 0 || n == 0 || w.k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let tiled = m >= TILE_MIN_M;
    let sp = Spikes::new(spikes, m, w, tiled);
    if tiled {
        // Each task returns its tile's outputs as [m, rows]; rows are then copied into place.
        let tiles: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(TILE))
            .into_par_iter()
            .map_init(
                || (vec![0i8; w.k], vec![0i8; w.k * TILE]),
                |(scratch, tile), b| {
                    let n0 = b * TILE;
                    let rows = TILE.min(n - n0);
                    let mut c = vec![0.0f32; m * rows];
                    spike_tile(w, &sp, n0, &mut c, scratch, tile);
                    (n0, c)
                },
            )
            .collect();
        let mut out = vec![0.0f32; m * n];
        for (n0, c) in tiles {
            let rows = c.len() / m;
            for mi in 0..m {
                out[mi * n + n0..mi * n + n0 + rows].copy_from_slice(&c[mi * rows..(mi + 1) * rows]);
            }
        }
        return Ok(out);
    }
    let mut out_t = vec![0.0f32; n * m];
    #[cfg(target_arch = "x86_64")]
    if !sp.nibbles.is_empty() {
        out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, chunk)| {
            // SAFETY: AVX2 present (use_nibble_path checked isa()); K and the group size are
            // multiples of 64, so every 32-byte unit lies inside its row.
            unsafe { crate::x86::spike4_rows(w, &sp.nibbles, &sp.counts, task * ROWS_PER_TASK, chunk, group_value) }
        });
        return Ok(transpose_to_mn(&out_t, n, m));
    }
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each_init(
        || vec![0i8; w.k],
        |scratch, (task, chunk)| spike_rows(w, &sp, task * ROWS_PER_TASK, chunk, scratch),
    );
    Ok(transpose_to_mn(&out_t, n, m))
}

/// `[N, M]` → `[M, N]` (the row-wise schedule's M is below TILE_MIN_M, so this is cheap).
fn transpose_to_mn(out_t: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for ni in 0..n {
        for mi in 0..m {
            out[mi * n + ni] = out_t[ni * m + mi];
        }
    }
    out
}

/// The float part shared by both schedules: one group's contribution.
#[inline(always)]
fn group_value(scale: f32, zero: Option<f32>, sum: i32, count: u32) -> f32 {
    match zero {
        None => scale * sum as f32,
        Some(z) => scale * (sum as f32 - z * count as f32),
    }
}

#[cfg(target_arch = "x86_64")]
fn use_nibble_path(w: &QWeights) -> bool {
    crate::simd::isa() >= crate::simd::Isa::Avx2 && crate::x86::spike4_applies(w)
}

multiversion!(fn spike_rows(w: &QWeights, sp: &Spikes, n0: usize, out: &mut [f32], scratch: &mut [i8]) => spike_rows_impl);

#[inline(always)]
fn spike_rows_impl(w: &QWeights, sp: &Spikes, n0: usize, out: &mut [f32], scratch: &mut [i8]) {
    let (m, k, groups) = (sp.m, sp.k, sp.groups);
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let n = n0 + r;
        w.decode_row(n, scratch);
        let codes: &[u8] = bytemuck::cast_slice(scratch);
        for (mi, om) in o.iter_mut().enumerate() {
            let mask = &sp.masks[mi * k..(mi + 1) * k];
            let mut total = 0.0f32;
            for g in 0..groups {
                let count = sp.counts[mi * groups + g];
                if count == 0 {
                    continue;
                }
                let (a, b) = w.group_range(g);
                let sum = if w.signed() {
                    masked_sum(&codes[a..b], &mask[a..b], |c| c as i8 as i32)
                } else {
                    masked_sum(&codes[a..b], &mask[a..b], |c| c as i32)
                };
                let zero = w.zero_points.map(|z| z[n * groups + g]);
                total += group_value(w.scales[n * groups + g], zero, sum, count);
            }
            *om = total;
        }
    }
}

/// Integer sum of the codes whose mask byte is 0xFF (AND, widen, add: no multiply).
#[inline(always)]
fn masked_sum(codes: &[u8], mask: &[u8], val: impl Fn(u8) -> i32) -> i32 {
    const L: usize = 32;
    let mut acc = [0i32; L];
    let cc = codes.chunks_exact(L);
    let mc = mask.chunks_exact(L);
    let (ct, mt) = (cc.remainder(), mc.remainder());
    for (ca, ma) in cc.zip(mc) {
        for i in 0..L {
            acc[i] += val(ca[i] & ma[i]);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (&c, &mk) in ct.iter().zip(mt) {
        s += val(c & mk);
    }
    s
}

multiversion!(fn spike_tile(w: &QWeights, sp: &Spikes, n0: usize, out: &mut [f32], scratch: &mut [i8], tile: &mut [i8]) => spike_tile_impl);

#[inline(always)]
fn spike_tile_impl(w: &QWeights, sp: &Spikes, n0: usize, out: &mut [f32], scratch: &mut [i8], tile: &mut [i8]) {
    let (m, k, groups) = (sp.m, sp.k, sp.groups);
    let rows = out.len() / m;
    // Transposed tile: tile[kk * TILE + j] = code of weight row n0 + j at column kk.
    tile.fill(0);
    for j in 0..rows {
        w.decode_row(n0 + j, scratch);
        for kk in 0..k {
            tile[kk * TILE + j] = scratch[kk];
        }
    }
    // Scales and zero points of the tile, transposed to [G, TILE] for lane-wise use.
    let mut st = vec![0.0f32; groups * TILE];
    let mut zt = vec![0.0f32; if w.zero_points.is_some() { groups * TILE } else { 0 }];
    for j in 0..rows {
        for g in 0..groups {
            st[g * TILE + j] = w.scales[(n0 + j) * groups + g];
            if let Some(z) = w.zero_points {
                zt[g * TILE + j] = z[(n0 + j) * groups + g];
            }
        }
    }
    let signed = w.signed();
    let mut res = [0.0f32; TILE];
    for mi in 0..m {
        res.fill(0.0);
        let idx = &sp.active[mi];
        let off = &sp.offsets[mi];
        for g in 0..groups {
            let count = sp.counts[mi * groups + g];
            if count == 0 {
                continue;
            }
            let mut acc = [0i32; TILE];
            // i16 lanes hold at most I16_RUN codes of 8 bits (|sum| ≤ 128 · 255 < 2^15).
            for run in idx[off[g] as usize..off[g + 1] as usize].chunks(I16_RUN) {
                let mut acc16 = [0i16; TILE];
                for &kk in run {
                    let col: &[i8; TILE] = tile[kk as usize * TILE..(kk as usize + 1) * TILE].try_into().unwrap();
                    if signed {
                        for j in 0..TILE {
                            acc16[j] = acc16[j].wrapping_add(col[j] as i16);
                        }
                    } else {
                        for j in 0..TILE {
                            acc16[j] = acc16[j].wrapping_add(col[j] as u8 as i16);
                        }
                    }
                }
                for j in 0..TILE {
                    acc[j] += acc16[j] as i32;
                }
            }
            // Same float formula as `group_value`, lane-wise.
            let s = &st[g * TILE..(g + 1) * TILE];
            let c = count as f32;
            if zt.is_empty() {
                for j in 0..TILE {
                    res[j] += s[j] * acc[j] as f32;
                }
            } else {
                let z = &zt[g * TILE..(g + 1) * TILE];
                for j in 0..TILE {
                    res[j] += s[j] * (acc[j] as f32 - z[j] * c);
                }
            }
        }
        out[mi * rows..(mi + 1) * rows].copy_from_slice(&res[..rows]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{code_range, pack_bits};

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn run(m: usize, n: usize, k: usize, bits: u32, gs: usize, asym: bool, rate_pct: u64) {
        let mut seed = (m * 131 + n * 17 + k * 5 + bits as usize * 3 + gs) as u64 + rate_pct;
        let (lo, hi) = code_range(bits, !asym);
        let codes: Vec<u8> = (0..n * k).map(|_| (lo + (lcg(&mut seed) as i64 % (hi - lo + 1))) as i8 as u8).collect();
        let packed = pack_bits(&codes, n, k, bits as i64, !asym).unwrap();
        let groups = k.div_ceil(gs);
        let scales: Vec<f32> = (0..n * groups).map(|_| (lcg(&mut seed) % 1000) as f32 / 1e4 + 0.01).collect();
        let zeros: Vec<f32> = (0..n * groups).map(|_| (lcg(&mut seed) % (1 << bits)) as f32).collect();
        let s01: Vec<u8> = (0..m * k).map(|_| (lcg(&mut seed) % 100 < rate_pct) as u8).collect();
        let mut spikes = pack_bits(&s01, m, k, 1, false).unwrap();
        // junk bits past K must be ignored
        if k % 8 != 0 {
            for mi in 0..m {
                spikes[mi * row_bytes(k, 1) + k / 8] |= 0xFFu8 << (k % 8);
            }
        }
        let zp = if asym { Some((zeros.as_slice(), (n, groups))) } else { None };
        let w = QWeights::new(&packed, (n, row_bytes(k, bits)), &scales, (n, groups), zp, k, bits as i64, gs as i64).unwrap();
        let y = spike_matmul(&spikes, m, &w).unwrap();
        for mi in 0..m {
            for ni in 0..n {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    if s01[mi * k + kk] == 0 {
                        continue;
                    }
                    let g = kk / gs;
                    let c = if asym { codes[ni * k + kk] as f64 - zeros[ni * groups + g] as f64 } else { codes[ni * k + kk] as i8 as f64 };
                    want += scales[ni * groups + g] as f64 * c;
                    mag += (scales[ni * groups + g] as f64 * c).abs();
                }
                let got = y[mi * n + ni] as f64;
                assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "m{mi} n{ni}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn matches_float64_both_schedules() {
        for &(m, n, k) in &[(1, 5, 64), (3, 70, 100), (8, 65, 129), (12, 130, 77)] {
            for bits in 1..=8 {
                for &gs in &[1, 7, 32, k] {
                    for &rate in &[0, 15, 100] {
                        run(m, n, k, bits, gs, false, rate);
                        run(m, n, k, bits, gs, true, rate);
                    }
                }
            }
        }
    }

    #[test]
    fn schedules_are_bit_identical() {
        let (n, k, bits, gs) = (70, 200, 4, 64);
        let mut seed = 7u64;
        let codes: Vec<u8> = (0..n * k).map(|_| ((lcg(&mut seed) % 16) as i64 - 8) as i8 as u8).collect();
        let packed = pack_bits(&codes, n, k, bits, true).unwrap();
        let groups = k.div_ceil(gs);
        let scales: Vec<f32> = (0..n * groups).map(|_| (lcg(&mut seed) % 1000) as f32 / 1e3).collect();
        let s01: Vec<u8> = (0..16 * k).map(|_| (lcg(&mut seed) % 5 == 0) as u8).collect();
        let spikes = pack_bits(&s01, 16, k, 1, false).unwrap();
        let w = QWeights::new(&packed, (n, row_bytes(k, 4)), &scales, (n, groups), None, k, bits, gs as i64).unwrap();
        let batch = spike_matmul(&spikes, 16, &w).unwrap();
        for mi in 0..16 {
            let one = spike_matmul(&spikes[mi * row_bytes(k, 1)..(mi + 1) * row_bytes(k, 1)], 1, &w).unwrap();
            assert_eq!(one, batch[mi * n..(mi + 1) * n].to_vec());
        }
    }

    #[test]
    fn rejects_wrong_spike_buffer() {
        let w = QWeights::new(&[0; 8], (2, 4), &[1.0; 2], (2, 1), None, 8, 4, 8).unwrap();
        assert!(spike_matmul(&[0; 2], 1, &w).is_err());
        assert!(spike_matmul(&[0; 1], 1, &w).is_ok());
    }
}
