//! Kernels of qslm: bit-packing, low-bit matmul, spike accumulation and LIF scans.
//!
//! Plain Rust on slices, tested with `cargo test`; `py.rs` (feature `python`) is the only file
//! that knows about Python. Layouts and semantics: `docs/kernels.md`.

pub mod error;
pub mod lif;
pub mod matmul;
pub mod pack;
pub mod qweights;
pub mod rwkv;
pub mod simd;
pub mod spike;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(feature = "python")]
mod py;

pub use error::{KernelError, Result};
pub use lif::{lif_scan, LifOutput, LifParams};
pub use matmul::lowbit_matmul;
pub use pack::{pack_bits, row_bytes, unpack_bits};
pub use qweights::QWeights;
pub use spike::spike_matmul;
