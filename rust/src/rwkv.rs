//! The SpikeGPT recurrent form (spec §6), one token per call, entirely in Rust.
//!
//! One call of [`Engine::step`] runs what `SpikeGPT.step` runs in torch for batch 1: embedding row
//! (decoded from its packed codes, or read from a float table), `ln0`, then per block
//! `ln1` → time mix → the key/value/receptance products → the WKV step → `output` → LIF₁ →
//! residual, `ln2` → channel mix (key, squared ReLU, value, σ(receptance)) → LIF₂ → residual,
//! the rescale halving, and at the end `ln_out` and the head. Matrix products go through
//! [`crate::matmul::lowbit_matmul`] (packed weights) or a float matrix–vector product (weights a
//! plan keeps at full precision); nothing is dequantized into a full float matrix.
//!
//! Why a fused step: with torch between the kernel calls, each token costs ~40 small tensor
//! operations per block on the interpreter, plus a wake-up of the kernels' thread pool for every
//! product; at the SpikeGPT-216M shape that overhead is as large as the products themselves.
//!
//! Float semantics follow the torch model operation by operation in float32 (mix
//! `x·μ + x'·(1 − μ)`, the stable WKV step of spec §5, LIF `H = V + (X − (V − v_reset))/τ`,
//! `Θ(0) = 1`, hard reset). Two places differ in rounding only: LayerNorm (mean and variance
//! accumulated in float64 here) and `exp` / the sigmoid (libm here, SLEEF in torch); the
//! Python runtime checks the resulting logits against the named parity tolerance
//! (`qslm.runtime.parity`).

use crate::error::{shape_err, KernelError, Result};
use crate::lif::LifParams;
use crate::matmul::lowbit_matmul;
use crate::qweights::QWeights;
use crate::simd::multiversion;
use rayon::prelude::*;

/// LayerNorm epsilon of SpikeGPT (`nn.LayerNorm` default).
pub const LN_EPS: f32 = 1e-5;
/// Initial WKV exponent offset ("minus infinity", spec §6).
pub const P_INIT: f32 = -1e30;

/// A weight matrix `[N, K]`: packed codes, or a float32 row-major matrix (kept at full precision).
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    Packed(QWeights<'a>),
    Dense { w: &'a [f32], n: usize, k: usize },
}

impl<'a> Weight<'a> {
    pub fn dense(w: &'a [f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k {
            return Err(shape_err("weight", format!("({n}, {k})"), format!("{} elements", w.len())));
        }
        Ok(Weight::Dense { w, n, k })
    }

    pub fn shape(&self) -> (usize, usize) {
        match self {
            Weight::Packed(q) => (q.n, q.k),
            Weight::Dense { n, k, .. } => (*n, *k),
        }
    }

    /// `W · x` for one input vector.
    fn matvec(&self, x: &[f32]) -> Vec<f32> {
        match self {
            // Shapes were validated when the engine was built: an error here is a bug, not input.
            Weight::Packed(q) => lowbit_matmul(x, 1, q).expect("shapes validated by Engine::validate"),
            Weight::Dense { w, n, k } => dense_matvec(w, *n, *k, x),
        }
    }

    /// Row `r` of the matrix as float32 (the embedding lookup).
    fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Packed(q) => {
                let mut codes = vec![0i8; q.k];
                q.decode_row(r, &mut codes);
                for g in 0..q.groups {
                    let (a, b) = q.group_range(g);
                    let s = q.scales[r * q.groups + g];
                    match q.zero_points {
                        None => {
                            for j in a..b {
                                out[j] = s * codes[j] as f32;
                            }
                        }
                        Some(z) => {
                            let z = z[r * q.groups + g];
                            for j in a..b {
                                out[j] = s * (codes[j] as u8 as f32 - z);
                            }
                        }
                    }
                }
            }
            Weight::Dense { w, k, .. } => out.copy_from_slice(&w[r * k..(r + 1) * k]),
        }
    }
}

/// Float32 lanes of the dense product's accumulators.
const LANES: usize = 16;

fn dense_matvec(w: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let rows = (1usize << 14).div_ceil(k.max(1)).max(4);
    out.par_chunks_mut(rows).enumerate().for_each(|(t, o)| dense_rows(w, k, x, t * rows, o));
    out
}

multiversion!(fn dense_rows(w: &[f32], k: usize, x: &[f32], n0: usize, out: &mut [f32]) => dense_rows_impl);

#[inline(always)]
fn dense_rows_impl(w: &[f32], k: usize, x: &[f32], n0: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[(n0 + r) * k..(n0 + r + 1) * k];
        let mut acc = [0.0f32; LANES];
        let (xc, rc) = (x.chunks_exact(LANES), row.chunks_exact(LANES));
        let tail: f32 = xc.remainder().iter().zip(rc.remainder()).map(|(a, b)| a * b).sum();
        for (xa, ra) in xc.zip(rc) {
            for i in 0..LANES {
                acc[i] += xa[i] * ra[i];
            }
        }
        *o = acc.iter().sum::<f32>() + tail;
    }
}

/// LayerNorm weight and bias, `[C]` each.
#[derive(Debug, Clone, Copy)]
pub struct Norm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

impl Norm<'_> {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let c = x.len();
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / c as f64;
        let rstd = (1.0 / (var + LN_EPS as f64).sqrt()) as f32;
        let mean = mean as f32;
        for j in 0..c {
            out[j] = (x[j] - mean) * rstd * self.weight[j] + self.bias[j];
        }
    }
}

/// One block's tensors (names as in the SpikeGPT state dict, spec §4).
#[derive(Debug, Clone, Copy)]
pub struct BlockParams<'a> {
    pub ln1: Norm<'a>,
    pub ln2: Norm<'a>,
    /// `att.time_mix_k/v/r`, `ffn.time_mix_k/r`: `[C]`.
    pub att_mix: [&'a [f32]; 3],
    pub ffn_mix: [&'a [f32]; 2],
    /// `w = −exp(att.time_decay)` (as the torch model computes it) and `u = att.time_first`.
    pub decay: &'a [f32],
    pub first: &'a [f32],
    pub att_key: Weight<'a>,
    pub att_value: Weight<'a>,
    pub att_receptance: Weight<'a>,
    pub att_output: Weight<'a>,
    pub ffn_key: Weight<'a>,
    pub ffn_receptance: Weight<'a>,
    pub ffn_value: Weight<'a>,
}

/// A SpikeGPT language model for the recurrent form.
#[derive(Debug, Clone)]
pub struct Engine<'a> {
    pub n_embd: usize,
    pub vocab_size: usize,
    pub emb: Weight<'a>,
    /// `Θ(emb)` before `ln0` (the binary-embedding switch of spec §7).
    pub binary_embedding: bool,
    pub ln0: Norm<'a>,
    pub blocks: Vec<BlockParams<'a>>,
    pub ln_out: Norm<'a>,
    pub head: Weight<'a>,
    /// Halve the residual stream after every `rescale_every` blocks (0: never).
    pub rescale_every: usize,
    pub lif: LifParams,
}

/// The recurrent state of batch 1: per block `[C]` vectors, and the spikes counted per LIF.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub att_x: Vec<f32>,
    pub ffn_x: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub p: Vec<f32>,
    pub v1: Vec<f32>,
    pub v2: Vec<f32>,
    /// Spikes fired per LIF since the state was made: `[2·L]`, (lif1, lif2) per block.
    pub spike_counts: Vec<u64>,
    /// Tokens stepped since the state was made.
    pub steps: u64,
}

fn check_len(name: &str, v: &[f32], c: usize) -> Result<()> {
    if v.len() != c {
        return Err(shape_err("tensor", format!("{name} of shape ({c},)"), format!("({},)", v.len())));
    }
    Ok(())
}

fn check_weight(name: &str, w: &Weight, n: usize, k: usize) -> Result<()> {
    if w.shape() != (n, k) {
        return Err(shape_err("weight", format!("{name} of shape ({n}, {k})"), format!("{:?}", w.shape())));
    }
    Ok(())
}

impl<'a> Engine<'a> {
    /// Check every shape against `n_embd` (C), `vocab_size` (V) and the 4C channel-mix width.
    pub fn validate(&self) -> Result<()> {
        let (c, v) = (self.n_embd, self.vocab_size);
        if c == 0 || v == 0 {
            return Err(KernelError::Parameter { name: "n_embd / vocab_size", requirement: "> 0", value: 0.0 });
        }
        check_weight("emb", &self.emb, v, c)?;
        check_weight("head", &self.head, v, c)?;
        for (name, n) in [("ln0", &self.ln0), ("ln_out", &self.ln_out)] {
            check_len(&format!("{name}.weight"), n.weight, c)?;
            check_len(&format!("{name}.bias"), n.bias, c)?;
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let p = |s: &str| format!("blocks.{l}.{s}");
            for (name, n) in [("ln1", &b.ln1), ("ln2", &b.ln2)] {
                check_len(&p(&format!("{name}.weight")), n.weight, c)?;
                check_len(&p(&format!("{name}.bias")), n.bias, c)?;
            }
            for m in b.att_mix.iter().chain(b.ffn_mix.iter()) {
                check_len(&p("time_mix"), m, c)?;
            }
            check_len(&p("att.time_decay"), b.decay, c)?;
            check_len(&p("att.time_first"), b.first, c)?;
            check_weight(&p("att.key"), &b.att_key, c, c)?;
            check_weight(&p("att.value"), &b.att_value, c, c)?;
            check_weight(&p("att.receptance"), &b.att_receptance, c, c)?;
            check_weight(&p("att.output"), &b.att_output, c, c)?;
            check_weight(&p("ffn.key"), &b.ffn_key, 4 * c, c)?;
            check_weight(&p("ffn.receptance"), &b.ffn_receptance, c, c)?;
            check_weight(&p("ffn.value"), &b.ffn_value, c, 4 * c)?;
        }
        Ok(())
    }

    /// A fresh state: zeros, `p = P_INIT`, membranes at `v_reset`.
    pub fn new_state(&self) -> State {
        let n = self.blocks.len() * self.n_embd;
        State {
            att_x: vec![0.0; n],
            ffn_x: vec![0.0; n],
            a: vec![0.0; n],
            b: vec![0.0; n],
            p: vec![P_INIT; n],
            v1: vec![self.lif.v_reset; n],
            v2: vec![self.lif.v_reset; n],
            spike_counts: vec![0; 2 * self.blocks.len()],
            steps: 0,
        }
    }

    fn check_state(&self, s: &State) -> Result<()> {
        let n = self.blocks.len() * self.n_embd;
        for (name, v) in [("att_x", &s.att_x), ("ffn_x", &s.ffn_x), ("a", &s.a), ("b", &s.b), ("p", &s.p), ("v1", &s.v1), ("v2", &s.v2)] {
            check_len(name, v, n)?;
        }
        if s.spike_counts.len() != 2 * self.blocks.len() {
            return Err(shape_err("spike_counts", format!("({},)", 2 * self.blocks.len()), format!("({},)", s.spike_counts.len())));
        }
        Ok(())
    }

    /// The LIF over `cur / scale` from membranes `v` (updated): adds the spikes into `x`, returns
    /// how many fired.
    fn lif_into(&self, cur: &[f32], scale: f32, v: &mut [f32], x: &mut [f32]) -> u64 {
        let p = self.lif;
        let mut fired = 0u64;
        for j in 0..cur.len() {
            let xin = if scale != 1.0 { cur[j] / scale } else { cur[j] };
            let h = v[j] + (xin - (v[j] - p.v_reset)) / p.tau;
            let s = h >= p.v_threshold;
            v[j] = if s { p.v_reset } else { h };
            // x + S with S ∈ {0, 1}, as the torch model adds its spike tensor.
            x[j] += s as u8 as f32;
            fired += s as u64;
        }
        fired
    }

    /// One token: the next-token logits `[V]`; `state` moves on by one token.
    ///
    /// The whole step runs on a thread of the kernels' pool (one hand-over per token instead
    /// of one per matrix product; the products' parallel loops then start from a pool thread).
    pub fn step(&self, token: usize, state: &mut State) -> Result<Vec<f32>> {
        if token >= self.vocab_size {
            return Err(KernelError::Parameter { name: "token", requirement: "< vocab_size", value: token as f64 });
        }
        self.check_state(state)?;
        let mut out = None;
        rayon::scope(|_| out = Some(self.step_in_pool(token, state)));
        Ok(out.unwrap_or_default())
    }

    fn step_in_pool(&self, token: usize, state: &mut State) -> Vec<f32> {
        let (c, v) = (self.n_embd, self.vocab_size);
        let mut e = vec![0.0f32; c];
        self.emb.row(token, &mut e);
        if self.binary_embedding {
            for t in e.iter_mut() {
                *t = if *t >= 0.0 { 1.0 } else { 0.0 };
            }
        }
        let mut x = vec![0.0f32; c];
        self.ln0.apply(&e, &mut x);
        let mut h = vec![0.0f32; c];
        let mut g = vec![0.0f32; c];
        let mut mixed = [vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]];
        for (l, b) in self.blocks.iter().enumerate() {
            let sl = l * c..(l + 1) * c;
            let scale = if self.rescale_every > 0 { (1u64 << (l / self.rescale_every).min(63)) as f32 } else { 1.0 };
            // Time mixing.
            b.ln1.apply(&x, &mut h);
            let hp = &state.att_x[sl.clone()];
            for (mi, mu) in b.att_mix.iter().enumerate() {
                for j in 0..c {
                    mixed[mi][j] = h[j] * mu[j] + hp[j] * (1.0 - mu[j]);
                }
            }
            // The three products in one fork: the pool's threads share all their rows.
            let ((k, vv), r) = rayon::join(
                || rayon::join(|| b.att_key.matvec(&mixed[0]), || b.att_value.matvec(&mixed[1])),
                || b.att_receptance.matvec(&mixed[2]),
            );
            let (a, bb, p) = (&mut state.a[sl.clone()], &mut state.b[sl.clone()], &mut state.p[sl.clone()]);
            let mut ry = vec![0.0f32; c];
            for j in 0..c {
                let (u, w) = (b.first[j], b.decay[j]);
                let uk = u + k[j];
                let q = p[j].max(uk);
                let (e1, e2) = ((p[j] - q).exp(), (uk - q).exp());
                let y = (e1 * a[j] + e2 * vv[j]) / (e1 * bb[j] + e2);
                let pw = p[j] + w;
                let q = pw.max(k[j]);
                let (e1, e2) = ((pw - q).exp(), (k[j] - q).exp());
                a[j] = e1 * a[j] + e2 * vv[j];
                bb[j] = e1 * bb[j] + e2;
                p[j] = q;
                ry[j] = sigmoid(r[j]) * y;
            }
            let att = b.att_output.matvec(&ry);
            state.spike_counts[2 * l] += self.lif_into(&att, scale, &mut state.v1[sl.clone()], &mut x);
            state.att_x[sl.clone()].copy_from_slice(&h);
            // Channel mixing.
            b.ln2.apply(&x, &mut g);
            let gp = &state.ffn_x[sl.clone()];
            for (mi, mu) in b.ffn_mix.iter().enumerate() {
                for j in 0..c {
                    mixed[mi][j] = g[j] * mu[j] + gp[j] * (1.0 - mu[j]);
                }
            }
            let (mut kappa, rr) = rayon::join(|| b.ffn_key.matvec(&mixed[0]), || b.ffn_receptance.matvec(&mixed[1]));
            for t in kappa.iter_mut() {
                let r = t.max(0.0);
                *t = r * r;
            }
            let vv = b.ffn_value.matvec(&kappa);
            let f: Vec<f32> = rr.iter().zip(&vv).map(|(&r, &v)| sigmoid(r) * v).collect();
            state.spike_counts[2 * l + 1] += self.lif_into(&f, scale, &mut state.v2[sl.clone()], &mut x);
            state.ffn_x[sl.clone()].copy_from_slice(&g);
            if self.rescale_every > 0 && (l + 1) % self.rescale_every == 0 {
                for t in x.iter_mut() {
                    *t /= 2.0;
                }
            }
        }
        self.ln_out.apply(&x, &mut h);
        state.steps += 1;
        let logits = self.head.matvec(&h);
        debug_assert_eq!(logits.len(), v);
        logits
    }
}

/// σ(x) = 1 / (1 + e^(−x)).
#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
