//! A validated view of a group-quantized, bit-packed weight matrix `[N, K]`.

use crate::error::{check_bits, check_group_size, shape_err, KernelError, Result};
use crate::pack::{row_bytes, unpack_row};

/// Packed weights: `W[n, k] = scale[n, g] · q[n, k]` (signed codes) or
/// `scale[n, g] · (q[n, k] − zero[n, g])` (unsigned codes, when zero points are given),
/// with `g = k / group_size`.
#[derive(Debug, Clone, Copy)]
pub struct QWeights<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f32],
    pub zero_points: Option<&'a [f32]>,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    pub bits: u32,
    pub group_size: usize,
    /// Groups per row, `ceil(k / group_size)`.
    pub groups: usize,
    /// Bytes per packed row, `ceil(k · bits / 8)`.
    pub row_bytes: usize,
}

impl<'a> QWeights<'a> {
    /// Validate shapes: `packed` is `packed_shape = (N, row_bytes(K, bits))`, `scales` and
    /// `zero_points` are `(N, ceil(K / group_size))`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        packed: &'a [u8],
        packed_shape: (usize, usize),
        scales: &'a [f32],
        scales_shape: (usize, usize),
        zero_points: Option<(&'a [f32], (usize, usize))>,
        k: usize,
        bits: i64,
        group_size: i64,
    ) -> Result<Self> {
        let bits = check_bits(bits, 1, 8)?;
        let (group_size, groups) = check_group_size(group_size, k)?;
        let n = packed_shape.0;
        let rb = row_bytes(k, bits);
        if packed_shape.1 != rb || packed.len() != n * rb {
            return Err(KernelError::RowBytes {
                name: "packed",
                expected: rb,
                got: packed_shape.1,
                detail: format!("K = {k} inputs (the last dimension of the activations) of {bits} bit(s) each"),
            });
        }
        if scales_shape != (n, groups) || scales.len() != n * groups {
            return Err(shape_err(
                "scales",
                format!("({n}, {groups}) = (N, ceil(K/group_size)) for K = {k}, group_size = {group_size}"),
                format!("{scales_shape:?}"),
            ));
        }
        let zero_points = match zero_points {
            None => None,
            Some((z, zshape)) => {
                if zshape != (n, groups) || z.len() != n * groups {
                    return Err(shape_err(
                        "zero_points",
                        format!("({n}, {groups}), the shape of scales"),
                        format!("{zshape:?}"),
                    ));
                }
                Some(z)
            }
        };
        Ok(Self { packed, scales, zero_points, n, k, bits, group_size, groups, row_bytes: rb })
    }

    /// Codes are signed two's complement unless zero points are given.
    #[inline]
    pub fn signed(&self) -> bool {
        self.zero_points.is_none()
    }

    #[inline(always)]
    pub fn row(&self, n: usize) -> &'a [u8] {
        &self.packed[n * self.row_bytes..(n + 1) * self.row_bytes]
    }

    /// Decode the integer codes of row `n` into `out` (length K).
    #[inline(always)]
    pub fn decode_row(&self, n: usize, out: &mut [i8]) {
        // i8 and u8 share size and alignment; unsigned codes are read back as u8 by callers.
        let out_u8: &mut [u8] = bytemuck::cast_slice_mut(out);
        unpack_row(self.row(n), self.bits, self.signed(), out_u8);
    }

    /// The half-open column range of group `g`.
    #[inline(always)]
    pub fn group_range(&self, g: usize) -> (usize, usize) {
        let a = g * self.group_size;
        (a, (a + self.group_size).min(self.k))
    }

    /// Weight value of an integer code in row `n`, group `g` (for dequantization).
    #[inline(always)]
    pub fn code_value(&self, code: i8) -> f32 {
        if self.signed() {
            code as f32
        } else {
            code as u8 as f32
        }
    }
}
