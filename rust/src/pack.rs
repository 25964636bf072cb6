//! Bit-packing of integer codes.
//!
//! Layout (docs/kernels.md): element `j` of a row occupies bits `[j·b, (j+1)·b)`, least
//! significant bit first (bit `i` is bit `i % 8` of byte `i / 8`); each row starts on a byte
//! boundary and takes `ceil(n·b / 8)` bytes; unused trailing bits are zero. Signed codes are
//! `b`-bit two's complement.

use crate::error::{check_bits, KernelError, Result};
use rayon::prelude::*;

/// Bytes taken by one packed row of `n` codes of `bits` bits.
#[inline]
pub fn row_bytes(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Valid code range for a bit width.
pub fn code_range(bits: u32, signed: bool) -> (i64, i64) {
    if signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    }
}

/// Pack `rows × n` codes (row-major). `values` holds raw bytes: `i8` codes reinterpreted as `u8`
/// when `signed`, plain `u8` codes otherwise. Returns `rows × row_bytes(n, bits)` bytes.
pub fn pack_bits(values: &[u8], rows: usize, n: usize, bits: i64, signed: bool) -> Result<Vec<u8>> {
    let bits = check_bits(bits, 1, 8)?;
    if values.len() != rows * n {
        return Err(KernelError::Shape {
            name: "values",
            expected: format!("{rows}×{n} = {} elements", rows * n),
            got: format!("{} elements", values.len()),
        });
    }
    check_range(values, n, bits, signed)?;
    let rb = row_bytes(n, bits);
    let mut out = vec![0u8; rows * rb];
    if rb == 0 {
        return Ok(out);
    }
    let mask = ((1u32 << bits) - 1) as u8;
    out.par_chunks_mut(rb)
        .zip(values.par_chunks(n))
        .for_each(|(dst, src)| pack_row(src, bits, mask, dst));
    Ok(out)
}

fn check_range(values: &[u8], n: usize, bits: u32, signed: bool) -> Result<()> {
    if bits == 8 {
        return Ok(());
    }
    let (lo, hi) = code_range(bits, signed);
    let bad = if signed {
        values.iter().position(|&v| {
            let v = v as i8 as i64;
            v < lo || v > hi
        })
    } else {
        values.iter().position(|&v| v as i64 > hi)
    };
    match bad {
        None => Ok(()),
        Some(index) => {
            let value = if signed { values[index] as i8 as i64 } else { values[index] as i64 };
            Err(KernelError::CodeRange {
                index,
                row: index / n.max(1),
                col: index % n.max(1),
                value,
                bits,
                kind: if signed { "signed" } else { "unsigned" },
                lo,
                hi,
            })
        }
    }
}

#[inline]
fn pack_row(src: &[u8], bits: u32, mask: u8, dst: &mut [u8]) {
    match bits {
        8 => dst.copy_from_slice(src),
        1 | 2 | 4 => {
            let per = (8 / bits) as usize;
            for (byte, chunk) in dst.iter_mut().zip(src.chunks(per)) {
                let mut b = 0u8;
                for (p, &v) in chunk.iter().enumerate() {
                    b |= (v & mask) << (p as u32 * bits);
                }
                *byte = b;
            }
        }
        _ => {
            // General widths: a bit accumulator flushed a byte at a time.
            let mut acc: u32 = 0;
            let mut nbits: u32 = 0;
            let mut o = 0;
            for &v in src {
                acc |= ((v & mask) as u32) << nbits;
                nbits += bits;
                while nbits >= 8 {
                    dst[o] = acc as u8;
                    o += 1;
                    acc >>= 8;
                    nbits -= 8;
                }
            }
            if nbits > 0 {
                dst[o] = acc as u8;
            }
        }
    }
}

/// Unpack `rows` packed rows of `n` codes. `packed` must hold exactly `rows × row_bytes(n, bits)`
/// bytes. Signed codes come back sign-extended as `i8` bytes, unsigned ones as `u8`.
pub fn unpack_bits(packed: &[u8], rows: usize, n: usize, bits: i64, signed: bool) -> Result<Vec<u8>> {
    let bits = check_bits(bits, 1, 8)?;
    let rb = row_bytes(n, bits);
    if packed.len() != rows * rb {
        return Err(KernelError::RowBytes {
            name: "packed",
            expected: rb,
            got: if rows == 0 { packed.len() } else { packed.len() / rows.max(1) },
            detail: format!("{n} codes of {bits} bit(s) each; {rows} rows, {} bytes in all", packed.len()),
        });
    }
    let mut out = vec![0u8; rows * n];
    if n == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(n)
        .zip(packed.par_chunks(rb))
        .for_each(|(dst, src)| unpack_row(src, bits, signed, dst));
    Ok(out)
}

/// Sign-extend a `bits`-bit code held in the low bits of a byte.
#[inline(always)]
pub fn extend(code: u8, bits: u32, signed: bool) -> u8 {
    if signed {
        let s = 8 - bits;
        (((code << s) as i8) >> s) as u8
    } else {
        code
    }
}

/// Unpack one row of `dst.len()` codes from `src` (row_bytes long) into raw bytes.
#[inline(always)]
pub fn unpack_row(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
    match bits {
        8 => dst.copy_from_slice(&src[..dst.len()]),
        4 => unpack_row_pow2::<4>(src, signed, dst),
        2 => unpack_row_pow2::<2>(src, signed, dst),
        1 => unpack_row_pow2::<1>(src, signed, dst),
        _ => unpack_row_odd(src, bits, signed, dst),
    }
}

/// Odd widths (3, 5, 6, 7): the widest method the instruction set allows (`simd::isa()`):
/// AVX-512 with VBMI, 64 codes at a time; BMI2 `pdep` (AVX2 and AVX-512 levels, where `pdep`
/// is fast), 8 at a time; else the portable word-at-a-time loop. All give the same bytes.
#[inline]
fn unpack_row_odd(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::{isa, Isa};
        let level = isa();
        if level == Isa::Avx512 && crate::x86::has_vbmi() {
            // SAFETY: AVX-512 F/BW/VL present (isa()) and VBMI detected; loads and stores are
            // masked to `src` and `dst`.
            unsafe { crate::x86::unpack_odd_vbmi(src, bits, signed, dst) };
            return;
        }
        if level >= Isa::Avx2 && crate::x86::fast_pdep() {
            // SAFETY: the AVX2 and AVX-512 levels of isa() include BMI2.
            unsafe { crate::x86::unpack_odd_bmi2(src, bits, signed, dst) };
            return;
        }
    }
    unpack_row_odd_portable(src, bits, signed, dst);
}

/// Portable odd-width unpacking (also the reference for the x86 versions in the tests).
fn unpack_row_odd_portable(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
    match bits {
        3 => unpack_odd_with::<3>(src, signed, dst, spread8::<3>),
        5 => unpack_odd_with::<5>(src, signed, dst, spread8::<5>),
        6 => unpack_odd_with::<6>(src, signed, dst, spread8::<6>),
        _ => unpack_odd_with::<7>(src, signed, dst, spread8::<7>),
    }
}

/// The 8 codes of `B` bits in the low `8·B` bits of `word` spread into the 8 bytes of the
/// result, code `j` in byte `j` (what BMI2 `pdep` does in one instruction).
#[inline(always)]
fn spread8<const B: u32>(word: u64) -> u64 {
    let mask = (1u64 << B) - 1;
    let mut out = 0u64;
    for j in 0..8 {
        out |= ((word >> (j * B)) & mask) << (8 * j);
    }
    out
}

/// Sign-extend 8 `B`-bit codes held in the low bits of the bytes of `v` (B < 8): the sign bit
/// `s = 2^(B−1)` of each byte times `2^(9−B) − 1` is `2^8 − 2^(B−1)`, the bits `B−1..8` of that
/// byte (no carry into the next byte).
#[inline(always)]
fn sign_extend8<const B: u32>(v: u64) -> u64 {
    let sign = 0x0101_0101_0101_0101u64 << (B - 1);
    v | ((v & sign) * ((1u64 << (9 - B)) - 1))
}

/// Unpack `dst.len()` codes of `B` bits (3/5/6/7) from `src`. Eight codes fill exactly `B`
/// bytes, so code group `i` is the low `8·B` bits of the little-endian word read at byte `i·B`;
/// `spread` turns it into 8 bytes. Words are read whole while 8 bytes remain in `src`; the last
/// groups go through a zero-padded copy of what is left, and only `dst.len()` codes are written.
#[inline(always)]
pub(crate) fn unpack_odd_with<const B: u32>(src: &[u8], signed: bool, dst: &mut [u8], spread: impl Fn(u64) -> u64) {
    let b = B as usize;
    let n = dst.len();
    let decode = |word: u64| {
        let v = spread(word);
        if signed {
            sign_extend8::<B>(v)
        } else {
            v
        }
    };
    let fast = if src.len() >= 8 { ((src.len() - 8) / b + 1).min(n / 8) } else { 0 };
    for (i, d) in dst[..8 * fast].chunks_exact_mut(8).enumerate() {
        let word: [u8; 8] = src[i * b..i * b + 8].try_into().unwrap_or([0; 8]);
        d.copy_from_slice(&decode(u64::from_le_bytes(word)).to_le_bytes());
    }
    for (i, d) in dst[8 * fast..].chunks_mut(8).enumerate() {
        let start = (fast + i) * b;
        let mut word = [0u8; 8];
        let avail = src.len().saturating_sub(start).min(8);
        word[..avail].copy_from_slice(&src[start..start + avail]);
        let v = decode(u64::from_le_bytes(word)).to_le_bytes();
        d.copy_from_slice(&v[..d.len()]);
    }
}

#[inline(always)]
fn unpack_row_pow2<const B: u32>(src: &[u8], signed: bool, dst: &mut [u8]) {
    let per = (8 / B) as usize;
    let mask = ((1u32 << B) - 1) as u8;
    let full = dst.len() / per;
    let (head, tail) = dst.split_at_mut(full * per);
    if signed {
        let s = 8 - B;
        for (chunk, &b) in head.chunks_exact_mut(per).zip(src) {
            for (p, d) in chunk.iter_mut().enumerate() {
                *d = ((((b >> (p as u32 * B)) << s) as i8) >> s) as u8;
            }
        }
    } else {
        for (chunk, &b) in head.chunks_exact_mut(per).zip(src) {
            for (p, d) in chunk.iter_mut().enumerate() {
                *d = (b >> (p as u32 * B)) & mask;
            }
        }
    }
    if !tail.is_empty() {
        let b = src[full];
        for (p, d) in tail.iter_mut().enumerate() {
            *d = extend((b >> (p as u32 * B)) & mask, B, signed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_lsb_first_with_byte_aligned_rows() {
        let vals: Vec<u8> = [1i8, -1, 7, -8].iter().map(|&v| v as u8).collect();
        assert_eq!(pack_bits(&vals, 1, 4, 4, true).unwrap(), vec![0xF1, 0x87]);
        // Two rows of three 3-bit codes: 9 bits → 2 bytes per row.
        let p = pack_bits(&[1, 2, 3, 7, 7, 7], 2, 3, 3, false).unwrap();
        assert_eq!(p, vec![0b1101_0001, 0b0000_0000, 0xFF, 0x01]);
    }

    #[test]
    fn round_trip_every_width() {
        for bits in 1..=8u32 {
            for signed in [false, true] {
                let (lo, hi) = code_range(bits, signed);
                let n = 37;
                let rows = 5;
                let vals: Vec<u8> = (0..rows * n)
                    .map(|i| (lo + (i as i64 * 7919) % (hi - lo + 1)) as i8 as u8)
                    .collect();
                let p = pack_bits(&vals, rows, n, bits as i64, signed).unwrap();
                assert_eq!(p.len(), rows * row_bytes(n, bits));
                let u = unpack_bits(&p, rows, n, bits as i64, signed).unwrap();
                let want: Vec<u8> = if signed || bits == 8 {
                    vals.clone()
                } else {
                    vals.iter().map(|&v| v & ((1u16 << bits) - 1) as u8).collect()
                };
                assert_eq!(u, want, "bits {bits} signed {signed}");
            }
        }
    }

    /// The bit-accumulator unpacking (the original generic loop): the reference for the fast ones.
    fn unpack_row_scalar(src: &[u8], bits: u32, signed: bool, dst: &mut [u8]) {
        let mask = ((1u32 << bits) - 1) as u8;
        let (mut acc, mut nbits) = (0u32, 0u32);
        let mut bytes = src.iter();
        for d in dst.iter_mut() {
            if nbits < bits {
                acc |= (*bytes.next().unwrap() as u32) << nbits;
                nbits += 8;
            }
            *d = extend(acc as u8 & mask, bits, signed);
            acc >>= bits;
            nbits -= bits;
        }
    }

    #[test]
    fn fast_unpack_matches_scalar() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        let lengths: Vec<usize> = (0..=200).chain([255, 256, 257, 511, 768, 1000, 3072, 4099]).collect();
        for bits in [3u32, 5, 6, 7] {
            for signed in [false, true] {
                for &n in &lengths {
                    let (lo, hi) = code_range(bits, signed);
                    let vals: Vec<u8> = (0..n).map(|_| (lo + next() as i64 % (hi - lo + 1)) as i8 as u8).collect();
                    // Exactly row_bytes: any read past the row would be past the slice.
                    let packed = pack_bits(&vals, 1, n, bits as i64, signed).unwrap();
                    let mut want = vec![0u8; n];
                    unpack_row_scalar(&packed, bits, signed, &mut want);
                    assert_eq!(&want, &vals, "reference, bits {bits} signed {signed} n {n}");
                    let mut got = vec![0xAAu8; n];
                    unpack_row(&packed, bits, signed, &mut got);
                    assert_eq!(got, want, "unpack_row, bits {bits} signed {signed} n {n}");
                    let mut got = vec![0xAAu8; n];
                    unpack_row_odd_portable(&packed, bits, signed, &mut got);
                    assert_eq!(got, want, "portable, bits {bits} signed {signed} n {n}");
                    #[cfg(target_arch = "x86_64")]
                    {
                        if std::arch::is_x86_feature_detected!("bmi2") {
                            let mut got = vec![0xAAu8; n];
                            // SAFETY: BMI2 detected.
                            unsafe { crate::x86::unpack_odd_bmi2(&packed, bits, signed, &mut got) };
                            assert_eq!(got, want, "bmi2, bits {bits} signed {signed} n {n}");
                        }
                        if crate::simd::detected_isa() == crate::simd::Isa::Avx512 && crate::x86::has_vbmi() {
                            let mut got = vec![0xAAu8; n];
                            // SAFETY: AVX-512 F/BW/VL and VBMI detected.
                            unsafe { crate::x86::unpack_odd_vbmi(&packed, bits, signed, &mut got) };
                            assert_eq!(got, want, "vbmi, bits {bits} signed {signed} n {n}");
                        }
                    }
                    // A row inside a longer buffer (the next row's bytes follow).
                    let mut buf = packed.clone();
                    buf.extend((0..16).map(|_| next()));
                    let mut got = vec![0xAAu8; n];
                    unpack_row(&buf[..packed.len()], bits, signed, &mut got);
                    assert_eq!(got, want, "row in buffer, bits {bits} signed {signed} n {n}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(pack_bits(&[0], 1, 1, 0, true), Err(KernelError::BitWidth { bits: 0, .. })));
        assert!(matches!(pack_bits(&[0], 1, 1, 9, true), Err(KernelError::BitWidth { bits: 9, .. })));
        assert!(matches!(
            pack_bits(&[8], 1, 1, 4, true),
            Err(KernelError::CodeRange { index: 0, value: 8, .. })
        ));
        assert!(matches!(pack_bits(&[1, 2], 1, 3, 4, true), Err(KernelError::Shape { .. })));
        assert!(matches!(unpack_bits(&[0; 3], 1, 7, 4, true), Err(KernelError::RowBytes { .. })));
        assert!(matches!(unpack_bits(&[0; 5], 1, 7, 4, true), Err(KernelError::RowBytes { .. })));
    }

    #[test]
    fn empty_inputs() {
        assert!(pack_bits(&[], 0, 5, 3, false).unwrap().is_empty());
        assert!(pack_bits(&[], 4, 0, 3, false).unwrap().is_empty());
        assert_eq!(unpack_bits(&[], 4, 0, 3, false).unwrap().len(), 0);
    }
}
