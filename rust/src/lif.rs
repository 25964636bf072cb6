//! `lif_scan`: the leaky integrate-and-fire neuron of SpikeGPT over the time axis.
//!
//! Per neuron, in float32 and in this order (spikingjelly `LIFNode`, `decay_input=True`, hard
//! reset; spec §5): `H = V + (X[t] − (V − v_reset)) / tau`; spike `S = H ≥ v_threshold`;
//! `V = S ? v_reset : H`. Neurons are independent, so the scan runs over blocks of 64 neurons in
//! parallel, each block stepping through time with 64 lanes.

use crate::error::{shape_err, KernelError, Result};
use crate::pack::row_bytes;
use crate::simd::multiversion;
use rayon::prelude::*;

/// Neurons per block (one 64-bit spike word per time step).
const BLOCK: usize = 64;

/// Output of [`lif_scan`].
#[derive(Debug, Clone, PartialEq)]
pub struct LifOutput {
    /// Bit-packed spikes `[T, ceil(N/8)]`.
    pub spikes: Vec<u8>,
    /// Membrane potential after the last step `[N]`.
    pub v_final: Vec<f32>,
    /// Spikes per neuron `[N]`.
    pub spike_counts: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
pub struct LifParams {
    pub tau: f32,
    pub v_threshold: f32,
    pub v_reset: f32,
}

impl LifParams {
    pub fn new(tau: f64, v_threshold: f64, v_reset: f64) -> Result<Self> {
        if !(tau.is_finite() && tau > 0.0) {
            return Err(KernelError::Parameter { name: "tau", requirement: "finite and > 0", value: tau });
        }
        if !v_threshold.is_finite() {
            return Err(KernelError::Parameter { name: "v_threshold", requirement: "finite", value: v_threshold });
        }
        if !v_reset.is_finite() {
            return Err(KernelError::Parameter { name: "v_reset", requirement: "finite", value: v_reset });
        }
        Ok(Self { tau: tau as f32, v_threshold: v_threshold as f32, v_reset: v_reset as f32 })
    }
}

/// Scan `currents` `[t, n]` (row-major) from the membrane potentials `v0` (zeros if `None`).
pub fn lif_scan(currents: &[f32], t: usize, n: usize, p: LifParams, v0: Option<&[f32]>) -> Result<LifOutput> {
    if currents.len() != t * n {
        return Err(shape_err("currents", format!("({t}, {n})"), format!("{} elements", currents.len())));
    }
    if let Some(v0) = v0 {
        if v0.len() != n {
            return Err(shape_err("v0", format!("({n},) to match currents (T, N) with N = {n}"), format!("({},)", v0.len())));
        }
    }
    let rb = row_bytes(n, 1);
    let blocks: Vec<(Vec<u64>, Vec<f32>, Vec<i64>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let c0 = b * BLOCK;
            let width = BLOCK.min(n - c0);
            let mut v = [0.0f32; BLOCK];
            if let Some(v0) = v0 {
                v[..width].copy_from_slice(&v0[c0..c0 + width]);
            }
            let mut counts = [0i64; BLOCK];
            let mut words = vec![0u64; t];
            lif_block(currents, n, c0, width, p, &mut v, &mut counts, &mut words);
            (words, v[..width].to_vec(), counts[..width].to_vec())
        })
        .collect();
    let mut spikes = vec![0u8; t * rb];
    let mut v_final = Vec::with_capacity(n);
    let mut spike_counts = Vec::with_capacity(n);
    for (b, (words, v, c)) in blocks.into_iter().enumerate() {
        let byte0 = b * BLOCK / 8;
        let nbytes = v.len().div_ceil(8);
        for (ti, w) in words.iter().enumerate() {
            spikes[ti * rb + byte0..ti * rb + byte0 + nbytes].copy_from_slice(&w.to_le_bytes()[..nbytes]);
        }
        v_final.extend(v);
        spike_counts.extend(c);
    }
    Ok(LifOutput { spikes, v_final, spike_counts })
}

multiversion!(fn lif_block(currents: &[f32], n: usize, c0: usize, width: usize, p: LifParams, v: &mut [f32; BLOCK], counts: &mut [i64; BLOCK], words: &mut [u64]) => lif_block_impl);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lif_block_impl(
    currents: &[f32],
    n: usize,
    c0: usize,
    width: usize,
    p: LifParams,
    v: &mut [f32; BLOCK],
    counts: &mut [i64; BLOCK],
    words: &mut [u64],
) {
    let mut x = [0.0f32; BLOCK];
    let mut s = [0u8; BLOCK];
    for (ti, word) in words.iter_mut().enumerate() {
        x[..width].copy_from_slice(&currents[ti * n + c0..ti * n + c0 + width]);
        for j in 0..BLOCK {
            let h = v[j] + (x[j] - (v[j] - p.v_reset)) / p.tau;
            let fire = h >= p.v_threshold;
            v[j] = if fire { p.v_reset } else { h };
            s[j] = fire as u8;
        }
        let mut w = 0u64;
        for j in 0..width {
            w |= (s[j] as u64) << j;
            counts[j] += s[j] as i64;
        }
        *word = w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(cur: &[f32], t: usize, n: usize, p: LifParams) -> (Vec<u8>, Vec<f32>) {
        let mut v = vec![0.0f32; n];
        let mut s = vec![0u8; t * n];
        for ti in 0..t {
            for j in 0..n {
                let h = v[j] + (cur[ti * n + j] - (v[j] - p.v_reset)) / p.tau;
                let f = h >= p.v_threshold;
                v[j] = if f { p.v_reset } else { h };
                s[ti * n + j] = f as u8;
            }
        }
        (s, v)
    }

    #[test]
    fn constant_current_known_answer() {
        // tau 2, X = 1.5: H = 0.75, then 0.75 + (1.5 - 0.75)/2 = 1.125 -> spike, reset, repeat.
        let p = LifParams::new(2.0, 1.0, 0.0).unwrap();
        let out = lif_scan(&[1.5; 4], 4, 1, p, None).unwrap();
        assert_eq!(out.spikes, vec![0, 1, 0, 1]);
        assert_eq!(out.spike_counts, vec![2]);
        assert_eq!(out.v_final, vec![0.0]);
    }

    #[test]
    fn matches_scalar_reference() {
        for &(t, n) in &[(7, 1), (13, 63), (9, 64), (5, 130), (0, 5), (5, 0)] {
            let cur: Vec<f32> = (0..t * n).map(|i| ((i * 7919 % 1000) as f32) / 300.0 - 0.8).collect();
            let p = LifParams::new(2.0, 1.0, -0.25).unwrap();
            let out = lif_scan(&cur, t, n, p, None).unwrap();
            let (s, v) = reference(&cur, t, n, p);
            assert_eq!(out.v_final, v);
            for ti in 0..t {
                for j in 0..n {
                    let bit = (out.spikes[ti * row_bytes(n, 1) + j / 8] >> (j % 8)) & 1;
                    assert_eq!(bit, s[ti * n + j]);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(LifParams::new(0.0, 1.0, 0.0).is_err());
        assert!(LifParams::new(f64::NAN, 1.0, 0.0).is_err());
        assert!(LifParams::new(2.0, f64::INFINITY, 0.0).is_err());
        let p = LifParams::new(2.0, 1.0, 0.0).unwrap();
        assert!(lif_scan(&[0.0; 5], 2, 3, p, None).is_err());
        assert!(lif_scan(&[0.0; 6], 2, 3, p, Some(&[0.0; 2])).is_err());
    }
}
