//! Runtime choice of the instruction set.
//!
//! The hot loops are written once as plain Rust over fixed-width lane arrays (`#[inline(always)]`
//! `*_impl` functions) and compiled three times by [`multiversion!`]: with AVX-512, with AVX2+FMA,
//! and for the baseline target. The widest set the CPU supports is picked once per process;
//! `QSLM_SIMD=scalar|avx2|avx512` forces a narrower one (tests use it to compare the paths).
//! The lane arrays fix the order of every floating-point operation, and Rust never fuses a
//! multiply and an add on its own, so the three versions give bit-identical results.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The best instruction set this CPU supports.
pub fn detected_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi2")
        {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi2")
        {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The instruction set in use: the detected one, lowered by `QSLM_SIMD` if set.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected_isa();
        let wanted = match std::env::var("QSLM_SIMD").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        best.min(wanted)
    })
}

/// Define `fn $name(args) -> R` that calls `$imp(args)` compiled for the best available ISA.
/// `$imp` must be `#[inline(always)]` so that it is compiled with the caller's target features.
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? => $imp:path) => {
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi1,bmi2,popcnt")]
                unsafe fn v512($($a: $t),*) $(-> $r)? { $imp($($a),*) }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,popcnt")]
                unsafe fn v256($($a: $t),*) $(-> $r)? { $imp($($a),*) }
                match $crate::simd::isa() {
                    // SAFETY: isa() only reports a set the CPU supports (runtime detection).
                    $crate::simd::Isa::Avx512 => return unsafe { v512($($a),*) },
                    $crate::simd::Isa::Avx2 => return unsafe { v256($($a),*) },
                    $crate::simd::Isa::Scalar => {}
                }
            }
            $imp($($a),*)
        }
    };
}
pub(crate) use multiversion;
