//! The Python binding layer: extract and check arrays, release the GIL, call the kernel, convert.
//! No kernel logic lives here.

use crate::error::KernelError;
use crate::{lif, matmul, pack, rwkv, spike, QWeights};
use numpy::ndarray::{Array1, Array2};
use numpy::{
    dtype, Element, IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::import_exception!(qslm.errors, QslmError);
pyo3::import_exception!(qslm.errors, ShapeError);
pyo3::import_exception!(qslm.errors, BitWidthError);
pyo3::import_exception!(qslm.errors, DTypeError);
pyo3::import_exception!(qslm.errors, LayoutError);
pyo3::import_exception!(qslm.errors, CodeRangeError);

fn to_py_err(e: KernelError) -> PyErr {
    let msg = e.to_string();
    match e {
        KernelError::BitWidth { .. } => BitWidthError::new_err(msg),
        KernelError::Shape { .. } | KernelError::RowBytes { .. } | KernelError::GroupSize { .. } => {
            ShapeError::new_err(msg)
        }
        KernelError::CodeRange { .. } => CodeRangeError::new_err(msg),
        KernelError::Parameter { .. } => QslmError::new_err(msg),
    }
}

/// A checked, C-contiguous, read-only numpy array argument.
struct Arg<'py, T: Element> {
    arr: numpy::PyReadonlyArrayDyn<'py, T>,
    shape: Vec<usize>,
}

impl<'py, T: Element> Arg<'py, T> {
    fn slice(&self) -> &[T] {
        // Contiguity was checked on extraction.
        self.arr.as_slice().unwrap_or(&[])
    }
    fn dims2(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            _ => (0, 0),
        }
    }
}

fn array<'py, T: Element>(obj: &Bound<'py, PyAny>, name: &str, ndims: &[usize], want: &str) -> PyResult<Arg<'py, T>> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        DTypeError::new_err(format!("{name} must be a numpy array of dtype {want}, got {ty}"))
    })?;
    if !ndims.contains(&untyped.ndim()) {
        let allowed: Vec<String> = ndims.iter().map(|d| format!("{d}-D")).collect();
        return Err(ShapeError::new_err(format!(
            "{name} must be {}, got a {}-D array of shape {}",
            allowed.join(" or "),
            untyped.ndim(),
            fmt_shape(untyped.shape())
        )));
    }
    if !untyped.dtype().is_equiv_to(&dtype::<T>(py)) {
        return Err(DTypeError::new_err(format!("{name} must have dtype {want}, got {}", untyped.dtype())));
    }
    if !untyped.is_c_contiguous() {
        return Err(LayoutError::new_err(format!(
            "{name} must be C-contiguous (got a strided view of shape {}; use numpy.ascontiguousarray)",
            fmt_shape(untyped.shape())
        )));
    }
    let shape = untyped.shape().to_vec();
    let arr = obj
        .cast::<PyArrayDyn<T>>()
        .map_err(|e| DTypeError::new_err(format!("{name}: {e}")))?
        .try_readonly()
        .map_err(|e| LayoutError::new_err(format!("{name} cannot be read: {e}")))?;
    Ok(Arg { arr, shape })
}

/// A shape the way numpy prints it: `(3, 5)`, `(7,)`.
fn fmt_shape(s: &[usize]) -> String {
    match s {
        [d] => format!("({d},)"),
        _ => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

fn opt_array<'py, T: Element>(obj: Option<&Bound<'py, PyAny>>, name: &str, ndims: &[usize], want: &str) -> PyResult<Option<Arg<'py, T>>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(array(o, name, ndims, want)?)),
        _ => Ok(None),
    }
}

fn nonneg(v: i64, name: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| ShapeError::new_err(format!("{name} must be >= 0, got {v}")))
}

fn shaped<'py, T: Element>(py: Python<'py>, v: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let internal = |e: numpy::ndarray::ShapeError| QslmError::new_err(format!("internal shape error: {e}"));
    Ok(match shape {
        [n] => Array1::from_shape_vec(*n, v).map_err(internal)?.into_pyarray(py).into_any(),
        [r, c] => Array2::from_shape_vec((*r, *c), v).map_err(internal)?.into_pyarray(py).into_any(),
        _ => return Err(QslmError::new_err("internal: unsupported output rank")),
    })
}

/// Pack integer codes: int8 values → signed two's complement, uint8 → unsigned.
#[pyfunction]
fn pack_bits<'py>(py: Python<'py>, values: &Bound<'py, PyAny>, bits: i64) -> PyResult<Bound<'py, PyAny>> {
    let want = "int8 (signed codes) or uint8 (unsigned codes)";
    let signed = match values.cast::<PyUntypedArray>() {
        Ok(a) if a.dtype().is_equiv_to(&dtype::<i8>(py)) => true,
        _ => false,
    };
    let (raw, shape): (Vec<u8>, Vec<usize>);
    let out = if signed {
        let a = array::<i8>(values, "values", &[1, 2], want)?;
        let (rows, n) = a.dims2();
        shape = a.shape.clone();
        let s: &[u8] = bytemuck::cast_slice(a.slice());
        raw = py.detach(|| pack::pack_bits(s, rows, n, bits, true)).map_err(to_py_err)?;
        (rows, n)
    } else {
        let a = array::<u8>(values, "values", &[1, 2], want)?;
        let (rows, n) = a.dims2();
        shape = a.shape.clone();
        let s = a.slice();
        raw = py.detach(|| pack::pack_bits(s, rows, n, bits, false)).map_err(to_py_err)?;
        (rows, n)
    };
    let rb = pack::row_bytes(out.1, bits as u32);
    let out_shape: Vec<usize> = if shape.len() == 1 { vec![rb] } else { vec![out.0, rb] };
    shaped(py, raw, &out_shape)
}

/// Unpack `n` codes per row; returns int8 when `signed`, else uint8.
#[pyfunction]
#[pyo3(signature = (packed, bits, n, signed=true))]
fn unpack_bits<'py>(py: Python<'py>, packed: &Bound<'py, PyAny>, bits: i64, n: i64, signed: bool) -> PyResult<Bound<'py, PyAny>> {
    let a = array::<u8>(packed, "packed", &[1, 2], "uint8")?;
    let n = nonneg(n, "n")?;
    let (rows, cols) = a.dims2();
    let bits_u = crate::error::check_bits(bits, 1, 8).map_err(to_py_err)?;
    let rb = pack::row_bytes(n, bits_u);
    if cols != rb {
        return Err(to_py_err(KernelError::RowBytes {
            name: "packed",
            expected: rb,
            got: cols,
            detail: format!("{n} codes of {bits_u} bit(s) each"),
        }));
    }
    let s = a.slice();
    let raw = py.detach(|| pack::unpack_bits(s, rows, n, bits, signed)).map_err(to_py_err)?;
    let out_shape: Vec<usize> = if a.shape.len() == 1 { vec![n] } else { vec![rows, n] };
    if signed {
        let v: Vec<i8> = raw.into_iter().map(|b| b as i8).collect();
        shaped(py, v, &out_shape)
    } else {
        shaped(py, raw, &out_shape)
    }
}

struct WeightArgs<'py> {
    packed: Arg<'py, u8>,
    scales: Arg<'py, f32>,
    zero_points: Option<Arg<'py, f32>>,
}

impl<'py> WeightArgs<'py> {
    fn extract(packed: &Bound<'py, PyAny>, scales: &Bound<'py, PyAny>, zero_points: Option<&Bound<'py, PyAny>>) -> PyResult<Self> {
        Ok(Self {
            packed: array(packed, "packed", &[2], "uint8")?,
            scales: array(scales, "scales", &[2], "float32")?,
            zero_points: opt_array(zero_points, "zero_points", &[2], "float32")?,
        })
    }
    fn view(&self, k: usize, bits: i64, group_size: i64) -> PyResult<QWeights<'_>> {
        let zp = self.zero_points.as_ref().map(|z| (z.slice(), z.dims2()));
        QWeights::new(self.packed.slice(), self.packed.dims2(), self.scales.slice(), self.scales.dims2(), zp, k, bits, group_size)
            .map_err(to_py_err)
    }
}

/// `x · dequant(W)ᵀ`: x float32 [M, K], packed uint8 [N, ceil(K·bits/8)], scales float32 [N, G].
#[pyfunction]
#[pyo3(signature = (x, packed, scales, bits, group_size, zero_points=None))]
fn lowbit_matmul<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    packed: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    bits: i64,
    group_size: i64,
    zero_points: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let x = array::<f32>(x, "x", &[2], "float32")?;
    let wa = WeightArgs::extract(packed, scales, zero_points)?;
    let (m, k) = x.dims2();
    let w = wa.view(k, bits, group_size)?;
    let xs = x.slice();
    let y = py.detach(|| matmul::lowbit_matmul(xs, m, &w)).map_err(to_py_err)?;
    shaped(py, y, &[m, w.n])
}

/// `S · dequant(W)ᵀ` for bit-packed spikes uint8 [M, ceil(k/8)].
#[pyfunction]
#[pyo3(signature = (spikes, k, packed, scales, bits, group_size, zero_points=None))]
#[allow(clippy::too_many_arguments)]
fn spike_matmul<'py>(
    py: Python<'py>,
    spikes: &Bound<'py, PyAny>,
    k: i64,
    packed: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    bits: i64,
    group_size: i64,
    zero_points: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let s = array::<u8>(spikes, "spikes", &[2], "uint8")?;
    let k = nonneg(k, "k")?;
    let wa = WeightArgs::extract(packed, scales, zero_points)?;
    let (m, cols) = s.dims2();
    if cols != pack::row_bytes(k, 1) {
        return Err(to_py_err(KernelError::RowBytes {
            name: "spikes",
            expected: pack::row_bytes(k, 1),
            got: cols,
            detail: format!("k = {k} spikes, one bit each"),
        }));
    }
    let w = wa.view(k, bits, group_size)?;
    let ss = s.slice();
    let y = py.detach(|| spike::spike_matmul(ss, m, &w)).map_err(to_py_err)?;
    shaped(py, y, &[m, w.n])
}

/// LIF scan over time: currents float32 [T, N] → (spikes uint8 [T, ceil(N/8)], v_final, counts).
#[pyfunction]
#[pyo3(signature = (currents, tau=2.0, v_threshold=1.0, v_reset=0.0, v0=None))]
fn lif_scan<'py>(
    py: Python<'py>,
    currents: &Bound<'py, PyAny>,
    tau: f64,
    v_threshold: f64,
    v_reset: f64,
    v0: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let c = array::<f32>(currents, "currents", &[2], "float32")?;
    let v0 = opt_array::<f32>(v0, "v0", &[1], "float32")?;
    let p = lif::LifParams::new(tau, v_threshold, v_reset).map_err(to_py_err)?;
    let (t, n) = c.dims2();
    let cs = c.slice();
    let vs = v0.as_ref().map(|v| v.slice());
    let out = py.detach(|| lif::lif_scan(cs, t, n, p, vs)).map_err(to_py_err)?;
    Ok((
        shaped(py, out.spikes, &[t, pack::row_bytes(n, 1)])?,
        shaped(py, out.v_final, &[n])?,
        shaped(py, out.spike_counts, &[n])?,
    ))
}

// ---- the fused SpikeGPT recurrent step ---------------------------------------------------------

/// Arrays the engine reads live: the Python objects are kept alive by the engine, and their data
/// is read through raw slices (numpy never moves or frees the buffer of an array that is
/// referenced; an in-place change of an array is seen by the next step, as in torch).
struct Held {
    keep: Vec<Py<PyAny>>,
}

impl Held {
    /// A checked array as a slice that lives as long as the engine (see [`Held`]).
    fn slice<T: Element>(&mut self, obj: &Bound<'_, PyAny>, name: &str, ndims: &[usize], want: &str) -> PyResult<(&'static [T], Vec<usize>)> {
        let a = array::<T>(obj, name, ndims, want)?;
        let s = a.slice();
        // SAFETY: `obj` is kept alive in `self.keep` for the engine's lifetime, and a numpy
        // array's buffer neither moves nor is freed while the array is referenced.
        let s: &'static [T] = unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) };
        self.keep.push(obj.clone().unbind());
        Ok((s, a.shape.clone()))
    }

    fn vector(&mut self, d: &Bound<'_, PyDict>, key: &str, c: usize) -> PyResult<&'static [f32]> {
        let obj = d.get_item(key)?.ok_or_else(|| ShapeError::new_err(format!("tensors: missing {key:?}")))?;
        let (s, _) = self.slice::<f32>(&obj, key, &[1], "float32")?;
        if s.len() != c {
            return Err(ShapeError::new_err(format!("{key} must have {c} elements, got {}", s.len())));
        }
        Ok(s)
    }

    fn norm(&mut self, d: &Bound<'_, PyDict>, key: &str, c: usize) -> PyResult<rwkv::Norm<'static>> {
        Ok(rwkv::Norm { weight: self.vector(d, &format!("{key}.weight"), c)?, bias: self.vector(d, &format!("{key}.bias"), c)? })
    }

    /// Module `name`: packed when `packed` has it (a tuple `(codes, scales, zero_points, bits,
    /// group_size)`), else the float32 matrix `tensors[name + ".weight"]`.
    fn weight(&mut self, tensors: &Bound<'_, PyDict>, packed: &Bound<'_, PyDict>, name: &str, n: usize, k: usize) -> PyResult<rwkv::Weight<'static>> {
        if let Some(t) = packed.get_item(name)? {
            let (codes, scales, zp, bits, group_size): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>, i64, i64) = t.extract()?;
            let (c, cshape) = self.slice::<u8>(&codes, &format!("{name} codes"), &[2], "uint8")?;
            let (s, sshape) = self.slice::<f32>(&scales, &format!("{name} scales"), &[2], "float32")?;
            let z = if zp.is_none() { None } else { Some(self.slice::<f32>(&zp, &format!("{name} zero points"), &[2], "float32")?) };
            let zv = z.as_ref().map(|(z, zs)| (*z, (zs[0], zs[1])));
            let q = QWeights::new(c, (cshape[0], cshape[1]), s, (sshape[0], sshape[1]), zv, k, bits, group_size).map_err(to_py_err)?;
            if q.n != n {
                return Err(ShapeError::new_err(format!("{name}: packed weight has {} rows, the model needs {n}", q.n)));
            }
            return Ok(rwkv::Weight::Packed(q));
        }
        let key = format!("{name}.weight");
        let obj = tensors.get_item(&key)?.ok_or_else(|| ShapeError::new_err(format!("{name} is neither packed nor in tensors ({key:?})")))?;
        let (w, shape) = self.slice::<f32>(&obj, &key, &[2], "float32")?;
        if shape != [n, k] {
            return Err(ShapeError::new_err(format!("{key} must be ({n}, {k}), got {}", fmt_shape(&shape))));
        }
        rwkv::Weight::dense(w, n, k).map_err(to_py_err)
    }
}

/// SpikeGPT's recurrent form for batch 1, one call per token, in Rust (`rust/src/rwkv.rs`).
///
/// `config`: `n_embd`, `vocab_size`, `n_layer`, `rescale_every`, `binary_embedding`, `tau`,
/// `v_threshold`, `v_reset`. `tensors`: float32 arrays by state-dict name (LayerNorms, time-mix
/// vectors flattened to `(C,)`, `blocks.{l}.att.decay` = −exp(time_decay), `blocks.{l}.att.time_first`,
/// and the `.weight` of every module kept at full precision). `packed`: module name →
/// `(codes, scales, zero_points or None, bits, group_size)` for every quantized module.
#[pyclass(module = "qslm._kernels", frozen)]
struct RwkvEngine {
    engine: rwkv::Engine<'static>,
    _held: Vec<Py<PyAny>>,
}

/// The recurrent state of an [`RwkvEngine`] (batch 1), with the spikes counted per LIF.
#[pyclass(module = "qslm._kernels")]
struct RwkvState {
    state: rwkv::State,
}

fn cfg<'py, T: for<'a> FromPyObject<'a, 'py, Error = PyErr>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    d.get_item(key)?
        .ok_or_else(|| QslmError::new_err(format!("config: missing {key:?}")))?
        .extract::<T>()
        .map_err(|e| QslmError::new_err(format!("config {key:?}: {e}")))
}

#[pymethods]
impl RwkvEngine {
    #[new]
    fn new(config: &Bound<'_, PyDict>, tensors: &Bound<'_, PyDict>, packed: &Bound<'_, PyDict>) -> PyResult<Self> {
        let c: usize = cfg(config, "n_embd")?;
        let v: usize = cfg(config, "vocab_size")?;
        let n_layer: usize = cfg(config, "n_layer")?;
        let lif = lif::LifParams::new(cfg(config, "tau")?, cfg(config, "v_threshold")?, cfg(config, "v_reset")?).map_err(to_py_err)?;
        let mut h = Held { keep: Vec::new() };
        let mut blocks = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let p = |s: &str| format!("blocks.{l}.{s}");
            blocks.push(rwkv::BlockParams {
                ln1: h.norm(tensors, &p("ln1"), c)?,
                ln2: h.norm(tensors, &p("ln2"), c)?,
                att_mix: [h.vector(tensors, &p("att.time_mix_k"), c)?, h.vector(tensors, &p("att.time_mix_v"), c)?, h.vector(tensors, &p("att.time_mix_r"), c)?],
                ffn_mix: [h.vector(tensors, &p("ffn.time_mix_k"), c)?, h.vector(tensors, &p("ffn.time_mix_r"), c)?],
                decay: h.vector(tensors, &p("att.decay"), c)?,
                first: h.vector(tensors, &p("att.time_first"), c)?,
                att_key: h.weight(tensors, packed, &p("att.key"), c, c)?,
                att_value: h.weight(tensors, packed, &p("att.value"), c, c)?,
                att_receptance: h.weight(tensors, packed, &p("att.receptance"), c, c)?,
                att_output: h.weight(tensors, packed, &p("att.output"), c, c)?,
                ffn_key: h.weight(tensors, packed, &p("ffn.key"), 4 * c, c)?,
                ffn_receptance: h.weight(tensors, packed, &p("ffn.receptance"), c, c)?,
                ffn_value: h.weight(tensors, packed, &p("ffn.value"), c, 4 * c)?,
            });
        }
        let engine = rwkv::Engine {
            n_embd: c,
            vocab_size: v,
            emb: h.weight(tensors, packed, "emb", v, c)?,
            binary_embedding: cfg(config, "binary_embedding")?,
            ln0: h.norm(tensors, "blocks.0.ln0", c)?,
            blocks,
            ln_out: h.norm(tensors, "ln_out", c)?,
            head: h.weight(tensors, packed, "head", v, c)?,
            rescale_every: cfg(config, "rescale_every")?,
            lif,
        };
        engine.validate().map_err(to_py_err)?;
        Ok(Self { engine, _held: h.keep })
    }

    /// A fresh state (zeros, p = −1e30, membranes at v_reset, no spikes counted).
    fn new_state(&self) -> RwkvState {
        RwkvState { state: self.engine.new_state() }
    }

    /// One token → next-token logits float32 `(V,)`; `state` moves on by one token.
    fn step<'py>(&self, py: Python<'py>, token: i64, mut state: PyRefMut<'_, RwkvState>) -> PyResult<Bound<'py, PyAny>> {
        let t = usize::try_from(token).map_err(|_| ShapeError::new_err(format!("token must be >= 0, got {token}")))?;
        let v = self.engine.vocab_size;
        if t >= v {
            return Err(ShapeError::new_err(format!("token {t} is outside the vocabulary [0, {v})")));
        }
        let st = &mut state.state;
        let e = &self.engine;
        let logits = py.detach(|| e.step(t, st)).map_err(to_py_err)?;
        shaped(py, logits, &[v])
    }
}

#[pymethods]
impl RwkvState {
    /// Spikes fired per LIF since the state was made: int64 `(2·L,)`, (lif1, lif2) per block.
    #[getter]
    fn spike_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v: Vec<i64> = self.state.spike_counts.iter().map(|&c| c as i64).collect();
        let n = v.len();
        shaped(py, v, &[n])
    }

    /// Tokens stepped since the state was made.
    #[getter]
    fn steps(&self) -> u64 {
        self.state.steps
    }
}

/// The instruction set the kernels use on this CPU ("avx512", "avx2" or "scalar").
#[pyfunction]
fn simd_isa() -> &'static str {
    crate::simd::isa().name()
}

/// Threads of the kernels' pool (set `RAYON_NUM_THREADS` before import to change it).
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

#[pymodule]
fn _kernels(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(lowbit_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(spike_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(lif_scan, m)?)?;
    m.add_function(wrap_pyfunction!(simd_isa, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_class::<RwkvEngine>()?;
    m.add_class::<RwkvState>()?;
    Ok(())
}
