//! The one error type of the kernels. Messages name the offending argument and the valid range;
//! `py.rs` maps each variant to a class of the `qslm.errors` family.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, KernelError>;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum KernelError {
    /// A bit width outside the range the kernel supports.
    #[error("bits must be an integer from {min} to {max}, got {bits}")]
    BitWidth { bits: i64, min: u32, max: u32 },

    /// An array whose shape does not agree with the others.
    #[error("{name}: expected shape {expected}, got {got}")]
    Shape { name: &'static str, expected: String, got: String },

    /// A packed buffer that is truncated or too long.
    #[error("{name}: expected {expected} bytes per row ({detail}), got {got}")]
    RowBytes { name: &'static str, expected: usize, got: usize, detail: String },

    /// A group size that cannot tile the input dimension.
    #[error("group_size must be >= 1, got {group_size}")]
    GroupSize { group_size: i64 },

    /// A code that does not fit in the requested bit width.
    #[error(
        "values: element {index} (row {row}, column {col}) is {value}, which does not fit in \
         {bits}-bit {kind} codes (valid range {lo}..={hi})"
    )]
    CodeRange { index: usize, row: usize, col: usize, value: i64, bits: u32, kind: &'static str, lo: i64, hi: i64 },

    /// A scalar parameter outside its domain.
    #[error("{name} must be {requirement}, got {value}")]
    Parameter { name: &'static str, requirement: &'static str, value: f64 },
}

/// Check a bit width against `min..=max`.
pub fn check_bits(bits: i64, min: u32, max: u32) -> Result<u32> {
    if bits < min as i64 || bits > max as i64 {
        return Err(KernelError::BitWidth { bits, min, max });
    }
    Ok(bits as u32)
}

/// Check a group size and return the number of groups `ceil(k / group_size)`.
pub fn check_group_size(group_size: i64, k: usize) -> Result<(usize, usize)> {
    if group_size < 1 {
        return Err(KernelError::GroupSize { group_size });
    }
    let g = group_size as usize;
    Ok((g, k.div_ceil(g)))
}

pub(crate) fn shape_err(name: &'static str, expected: String, got: String) -> KernelError {
    KernelError::Shape { name, expected, got }
}
