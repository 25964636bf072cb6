//! The Python binding layer: extract and check arrays, release the GIL, call the kernel, convert.
//! No kernel logic lives here.

use crate::error::KernelError;
use crate::{lif, matmul, pack, spike, QWeights};
use numpy::ndarray::{Array1, Array2};
use numpy::{
    dtype, Element, IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

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
    Ok(())
}
