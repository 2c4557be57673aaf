//! The fair policy: exponentially decaying runtimes in fixed point, weights,
//! the allocation-free run queue and the time-slice rule. Pure logic, no
//! atomics, no floating point.
//!
//! # The model (after OSv's `core/sched.cc`, `thread_runtime` and `cpu::c`)
//!
//! Let `x_i(s)` be 1 while thread `i` runs on a CPU and 0 otherwise. Its
//! *decayed usage* at time `t` is
//!
//! ```text
//! U_i(t) = ∫_{-∞}^{t} e^{-(t-s)/τ} x_i(s) ds        (0 ≤ U_i ≤ τ)
//! ```
//!
//! and its *runtime* is `R_i = U_i / w_i` with `w_i` its [`Weight`] relative
//! to [`Weight::NORMAL`] (`w = weight/1024`). The run
//! queue is ordered by `R`: the thread that ran least (per unit of weight)
//! recently runs next. Old history fades with time constant `τ`
//! ([`FairParams::tau`], 200 ms as in OSv).
//!
//! Decaying every thread's `R` at every tick would be `O(n)` and needs a tick.
//! OSv's trick, followed here: all runtimes on one CPU decay by the same
//! factor, so the CPU keeps a growing normaliser `c(t) = c₀·e^{t/τ}` and each
//! thread stores `rtt_i = R_i·c` (the scaled runtime), which only changes
//! while the thread runs (`rtt += (c_new - c_old)/w`). Comparisons of `rtt`
//! are comparisons of `R`. When `c` outgrows its range the CPU renormalises
//! (divides `c` and every queued `rtt` by `2^16`) and bumps an epoch; a
//! sleeping thread catches up lazily when it is next charged or queued
//! ([`Fair::sync`]), as OSv's `renormalize_count`.
//!
//! # Fixed point (no floating point on the scheduler path)
//!
//! `charge`, `sync`, `time_until`, `preemption_deadline`, `should_preempt`,
//! the run queue and the wakeup IPI decision use only integers (no FPU state
//! is touched by the scheduler):
//!
//! - `c` is a `u64` in `[2^32, 2^48)`; renormalising by `2^16` happens once
//!   per `16·ln 2·τ ≈ 11·τ` of CPU time (2.2 s with the defaults). A scaled
//!   runtime is a `u64` (at most `c·NORMAL/w < 2^58` for `w ≥ 1`); one unit
//!   is `1/c ≤ 2^-32` of `τ` per weight (0.047 ns of usage at `τ = 200 ms`).
//! - The CPU keeps `l = log2 c` exactly in Q64: a charge of `Δ` adds
//!   `Δ/(τ·ln 2)` (one multiply by a per-CPU reciprocal) and sets
//!   `c = ⌊2^l⌋ = ⌊2^f·2^k⌋` (`k + f = l`), `2^f` from a 64-entry table of
//!   `2^{a/64}` and a degree-5 polynomial (relative error below `10^-14`,
//!   not accumulated: `c` is recomputed from `l` each time, and the thread
//!   is charged exactly `c_new - c_old`). A single charge of `24·τ` or more
//!   forgets all history (`e^-24 < 2^-34`).
//! - The weight enters as `NORMAL/w` in Q32, cached in the [`Runtime`]:
//!   charges of a `NORMAL` thread are exact; another weight `w` (raw) is
//!   under-charged by less than one unit per charge plus a relative
//!   `w·2^-42` (the rounding of `2^42/w`).
//! - `time_until` inverts it as `ln(full + d) - ln(full)`, `ln(full)` from
//!   `l` and the weight's cached `ln(2^42/w)`, `ln(full + d)` from an integer
//!   `ln` (leading bit, the same table, a degree-6 series; absolute error
//!   below `10^-12`; no division), and rounds up by `Δ·2^-20 + 3 ns` plus at
//!   most `4τ/full` (the time of two `rtt` units, rounded up to a power of
//!   two; below 2 ns for `w ≤ 8·NORMAL`), so the running
//!   thread is never left short of its target (tested for weights 1 to
//!   `2^32 - 1`) and overshoots it by at most that margin.
//!
//! # The fairness guarantee
//!
//! On one CPU, while a set `S` of threads is continuously runnable, the
//! scheduler keeps their runtimes within one *slice* of each other: the
//! running thread is switched out when its runtime reaches the smallest
//! queued runtime, but not before it has run [`FairParams::granularity`]
//! `g` since it was switched in. Hence for any two `i, j ∈ S`, at all times
//! after they have both run once,
//!
//! ```text
//! |U_i/w_i - U_j/w_j| ≤ g·(1/w_i + 1/w_j) + ε_i + ε_j + δ
//! ```
//!
//! (plus rounding of the timer), where the fixed-point terms are: `δ`, the
//! `time_until` margin (the preemption timer fires at most `Δ·2^-20 + 3 ns`
//! plus `4τ/full` late for a slice `Δ`), and `ε_i`, thread `i`'s
//! accumulated truncation: each charge (for `w_i ≠ NORMAL`) and each
//! renormalisation truncates its `rtt` by less than one unit, i.e. by less
//! than `τ/c` of `U_i/w_i`, and units made before a renormalisation merge
//! into one; the weight's reciprocal adds a relative `w_i·2^-42` (raw `w_i`).
//! So `ε_i < (1 + n_i)·τ/c + w_i·2^-42·τ` with `n_i` the thread's charges
//! since the CPU's last renormalisation. With the defaults, weights `NORMAL` to
//! `8·NORMAL`, at most one charge per 10 µs and slices up to `τ`,
//! `ε_i + ε_j + δ < 1 µs`, 0.1% of `g`: the bound is `g·(1/w_i + 1/w_j)`
//! to that precision. Since `Σ U_i → τ` on a busy CPU, each thread's decayed
//! share `U_i/τ` converges to `w_i/Σw` within `(g + 1 µs)·Σw/(w_min·τ)`, and
//! so does its plain share of CPU time over any window much longer than `τ`.
//! The property tests check: 2 to 6 CPU-bound threads with weights 1..8,
//! `τ = 200 ms`, `g = 1 ms`: over the window `[1 s, 5 s]` every share is
//! within 0.01 (absolute) of `w_i/Σw` (measured worst over 100 random sets,
//! fixed point: 0.00354 for `[1 s, 5 s]`, 0.00456 already for `[0, 1 s]`,
//! 0.00478 for `[1 s, 11 s]`, across renormalisations; the `f64` version
//! measured 0.0035 and 0.0046).
//!
//! Latency: an interactive thread whose demand is below its fair share
//! (`burst/(burst+sleep) < w_i/Σw`) runs within `g` of every wakeup beside
//! any CPU-bound threads; one that asks for more still gets at least its fair
//! share (both property-tested in the simulator, on one and two CPUs).
//!
//! A thread that wakes keeps its decayed runtime (which shrank while it
//! slept), so interactive threads run first; a new thread starts at runtime 0.
//! Neither can monopolise the CPU: a runnable thread's runtime never exceeds
//! `τ/w`, so a fully rested thread `p` overtakes the queue head `h` after at
//! most `τ·ln(1 + w_p/w_h) + g` of running (`0.69·τ` for equal weights). The
//! simulator meets this bound to within 10% (property `newcomer_cannot_monopolise`).

use crate::time::{Instant, Nanos};
use core::num::NonZeroU32;

/// A thread's share of the CPU relative to others: runtime advances at
/// `NORMAL/weight` per unit of CPU time, so a thread of weight `2·NORMAL`
/// gets twice the CPU of a `NORMAL` one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The default weight.
    pub const NORMAL: Weight = Weight(NonZeroU32::new(1024).unwrap());

    /// A weight; `None` for zero.
    pub const fn new(w: u32) -> Option<Weight> {
        match NonZeroU32::new(w) {
            Some(w) => Some(Weight(w)),
            None => None,
        }
    }

    /// The raw weight.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Runtime per unit of normaliser growth, `NORMAL / w`, in Q32 fixed
    /// point (`2^42 / w`: exact for `NORMAL`, at most `2^42` for `w = 1`).
    const fn inv_q32(self) -> u64 {
        ((Self::NORMAL.get() as u64) << 32) / self.get() as u64
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::NORMAL
    }
}

/// Tunables of the fair policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairParams {
    /// The decay time constant `τ`: usage older than a few `τ` is forgotten.
    pub tau: Nanos,
    /// The minimum slice `g` a switched-in thread keeps before the time-slice
    /// rule may preempt it (bounds the switch rate at `1/g`).
    pub granularity: Nanos,
}

impl Default for FairParams {
    /// `τ = 200 ms` (OSv's `tau`), `g = 1 ms`.
    fn default() -> Self {
        FairParams { tau: Nanos::from_millis(200), granularity: Nanos::from_millis(1) }
    }
}

/// A remaining share shorter than this is treated as used up: arming a timer
/// for it would cost more than the unfairness it avoids.
pub const MIN_TIMER: Nanos = Nanos(1_000);

// ---- Fixed-point arithmetic (no floating point on any scheduler path) ----
//
// Notation: a `Qn` value `v` stands for `v / 2^n`.

/// The normaliser's range: `c ∈ [C_MIN, C_MAX)`, i.e. `2^32 ≤ c < 2^48`. One
/// unit of a scaled runtime is `1/c ≤ 2^-32` of `τ`·`NORMAL/w`.
const C_BITS: u32 = 32;
const C_MIN: u64 = 1 << C_BITS;
const C_MAX: u64 = 1 << 48;
/// `log2 C_MIN` in Q64.
const L_MIN: u128 = (C_BITS as u128) << 64;
/// Each renormalisation divides `c` and every scaled runtime by `2^16` (an
/// epoch step); it happens after `16·ln 2·τ ≈ 11·τ` of CPU time.
const RENORM_BITS: u32 = 16;
/// Epochs after which a scaled runtime has shifted to nothing (`4·16 ≥ 64`).
const FORGET_EPOCHS: u32 = 4;
/// A single charge of at least `24·τ` forgets all history: `e^-24 < 2^-34`
/// is below the resolution of `c`.
const FORGET_TAUS: u64 = 24;

/// `ln 2` in Q64 (`0xb17217f7d1cf79ab`, the standard constant).
const LN2_Q64: u64 = 0xb172_17f7_d1cf_79ab;
/// `log2(e) = 1/ln 2` in Q63.
const LOG2E_Q63: u64 = 0xb8aa_3b29_5c17_f0bb;
/// `2^(a/64)` for `a = 0..64`, Q63 (rounded down from 80-digit values),
/// then two saturated entries so `a + 2` may be looked up.
const EXP2_64THS_Q63: [u64; 66] = [
    0x8000_0000_0000_0000,
    0x8164_d1f3_bc03_0773,
    0x82cd_8698_ac2b_a1d7,
    0x843a_28c3_acde_4046,
    0x85aa_c367_cc48_7b14,
    0x871f_6196_9e8d_1010,
    0x8898_0e80_92da_8527,
    0x8a14_d575_496e_fd9a,
    0x8b95_c1e3_ea8b_d6e6,
    0x8d1a_df5b_7e5b_a9e5,
    0x8ea4_398b_45cd_53c0,
    0x9031_dc43_1466_b1dc,
    0x91c3_d373_ab11_c336,
    0x935a_2b2f_13e6_e92b,
    0x94f4_efa8_fef7_0961,
    0x9694_2d37_2018_5a00,
    0x9837_f051_8db8_a96f,
    0x99e0_4593_20b7_fa64,
    0x9b8d_39b9_d54e_5538,
    0x9d3e_d9a7_2cff_b750,
    0x9ef5_3260_91a1_11ad,
    0xa0b0_510f_b971_4fc2,
    0xa270_4303_0c49_6818,
    0xa435_15ae_09e6_809e,
    0xa5fe_d6a9_b151_38ea,
    0xa7cd_93b4_e965_3569,
    0xa9a1_5ab4_ea7c_0ef8,
    0xab7a_39b5_a93e_d337,
    0xad58_3eea_42a1_4ac6,
    0xaf3b_78ad_690a_4374,
    0xb123_f581_d2ac_258f,
    0xb311_c412_a911_2489,
    0xb504_f333_f9de_6484,
    0xb6fd_91e3_28d1_7791,
    0xb8fb_af47_62fb_9ee9,
    0xbaff_5ab2_133e_45fb,
    0xbd08_a39f_580c_36be,
    0xbf17_99b6_7a73_1082,
    0xc12c_4cca_6670_9456,
    0xc346_ccda_2497_6407,
    0xc567_2a11_5506_dadd,
    0xc78d_74c8_abb9_b15c,
    0xc9b9_bd86_6e2f_27a2,
    0xcbec_14fe_f272_7c5c,
    0xce24_8c15_1f84_80e3,
    0xd063_33da_ef2b_2594,
    0xd2a8_1d91_f12a_e45a,
    0xd4f3_5aab_cfed_fa1f,
    0xd744_fcca_d69d_6af4,
    0xd99d_15c2_78af_d7b5,
    0xdbfb_b797_daf2_3755,
    0xde60_f482_5e0e_9123,
    0xe0cc_deec_2a94_e111,
    0xe33f_8972_be8a_5a51,
    0xe5b9_06e7_7c83_48a8,
    0xe839_6a50_3c4b_dc68,
    0xeac0_c6e7_dd24_392e,
    0xed4f_301e_d994_2b84,
    0xefe4_b99b_dcda_f5cb,
    0xf281_773c_59ff_b139,
    0xf525_7d15_2486_cc2c,
    0xf7d0_df73_0ad1_3bb8,
    0xfa83_b2db_722a_033a,
    0xfd3e_0c0c_f486_c174,
    u64::MAX,
    u64::MAX,
];
/// `2^(-a/64)` for `a = 0..64`, Q64 (`a = 0` saturates to `2^64 - 1`).
const EXP2_NEG_64THS_Q64: [u64; 64] = [
    0xffff_ffff_ffff_ffff,
    0xfd3e_0c0c_f486_c174,
    0xfa83_b2db_722a_033a,
    0xf7d0_df73_0ad1_3bb8,
    0xf525_7d15_2486_cc2c,
    0xf281_773c_59ff_b139,
    0xefe4_b99b_dcda_f5cb,
    0xed4f_301e_d994_2b84,
    0xeac0_c6e7_dd24_392e,
    0xe839_6a50_3c4b_dc68,
    0xe5b9_06e7_7c83_48a8,
    0xe33f_8972_be8a_5a51,
    0xe0cc_deec_2a94_e111,
    0xde60_f482_5e0e_9123,
    0xdbfb_b797_daf2_3755,
    0xd99d_15c2_78af_d7b5,
    0xd744_fcca_d69d_6af4,
    0xd4f3_5aab_cfed_fa1f,
    0xd2a8_1d91_f12a_e45a,
    0xd063_33da_ef2b_2594,
    0xce24_8c15_1f84_80e3,
    0xcbec_14fe_f272_7c5c,
    0xc9b9_bd86_6e2f_27a2,
    0xc78d_74c8_abb9_b15c,
    0xc567_2a11_5506_dadd,
    0xc346_ccda_2497_6407,
    0xc12c_4cca_6670_9456,
    0xbf17_99b6_7a73_1082,
    0xbd08_a39f_580c_36be,
    0xbaff_5ab2_133e_45fb,
    0xb8fb_af47_62fb_9ee9,
    0xb6fd_91e3_28d1_7791,
    0xb504_f333_f9de_6484,
    0xb311_c412_a911_2489,
    0xb123_f581_d2ac_258f,
    0xaf3b_78ad_690a_4374,
    0xad58_3eea_42a1_4ac6,
    0xab7a_39b5_a93e_d337,
    0xa9a1_5ab4_ea7c_0ef8,
    0xa7cd_93b4_e965_3569,
    0xa5fe_d6a9_b151_38ea,
    0xa435_15ae_09e6_809e,
    0xa270_4303_0c49_6818,
    0xa0b0_510f_b971_4fc2,
    0x9ef5_3260_91a1_11ad,
    0x9d3e_d9a7_2cff_b750,
    0x9b8d_39b9_d54e_5538,
    0x99e0_4593_20b7_fa64,
    0x9837_f051_8db8_a96f,
    0x9694_2d37_2018_5a00,
    0x94f4_efa8_fef7_0961,
    0x935a_2b2f_13e6_e92b,
    0x91c3_d373_ab11_c336,
    0x9031_dc43_1466_b1dc,
    0x8ea4_398b_45cd_53c0,
    0x8d1a_df5b_7e5b_a9e5,
    0x8b95_c1e3_ea8b_d6e6,
    0x8a14_d575_496e_fd9a,
    0x8898_0e80_92da_8527,
    0x871f_6196_9e8d_1010,
    0x85aa_c367_cc48_7b14,
    0x843a_28c3_acde_4046,
    0x82cd_8698_ac2b_a1d7,
    0x8164_d1f3_bc03_0773,
];
/// `⌊64·log2(1 + j/64)⌋` for `j = 0..64`: where the search for the 64th of
/// a mantissa whose top fraction bits are `j` starts (it ends within 2).
const LOG2_64THS_GUESS: [u8; 64] = [
    0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 17, 18, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 43, 44, 45, 46, 47, 48, 49, 50, 50, 51, 52, 53, 54, 54, 55,
    56, 57, 58, 58, 59, 60, 61, 61, 62, 63,
];

const fn mul_hi(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) >> 64) as u64
}

/// `2^63/k!` for `k = 1..=5` (index `k - 1`): Taylor coefficients of `e^z`.
const EXP_COEF_Q63: [u64; 5] = {
    let mut c = [0u64; 5];
    let (mut k, mut fact) = (1u64, 1u64);
    while k <= 5 {
        fact *= k;
        c[k as usize - 1] = (1 << 63) / fact;
        k += 1;
    }
    c
};

/// `2^63/n` for `n = 1..=6` (index `n - 1`): series coefficients of
/// `ln(1 + u)`.
const LN_COEF_Q63: [u64; 6] = {
    let mut c = [0u64; 6];
    let mut n = 1u64;
    while n <= 6 {
        c[n as usize - 1] = (1 << 63) / n;
        n += 1;
    }
    c
};

/// `2^f` for a Q64 fraction `f ∈ [0, 1)`, as Q63 in `[2^63, 2^64)`.
/// `2^f = 2^(a/64) · e^z` with `a` the top 6 bits of `f` and
/// `z = (f mod 1/64)·ln 2 < 0.0109`; `e^z - 1` by its Taylor polynomial to
/// `z^5` (truncation `< z^6/6! < 3·10^-15`) in Horner form.
#[inline]
fn exp2_frac_q63(f: u64) -> u64 {
    let a = (f >> 58) as usize;
    // z in Q64.
    let z = mul_hi(f & ((1 << 58) - 1), LN2_Q64);
    // s = 1 + z/2! + z²/3! + z³/4! + z⁴/5! in Q63; then e^z - 1 = z·s.
    let mut s = EXP_COEF_Q63[4];
    let mut k = 4;
    while k > 0 {
        k -= 1;
        s = EXP_COEF_Q63[k] + mul_hi(z, s);
    }
    let em1 = ((z as u128 * s as u128) >> 63) as u64;
    let t = EXP2_64THS_Q63[a];
    t + mul_hi(t, em1)
}

/// `ln(n)` in Q64 for an integer `n ≥ 1`: the integer part of `log2 n`
/// from the leading bit, the next 6 bits from the 64ths table (a guess from
/// the mantissa's top bits and two comparisons), and `ln(1 + u)` of the rest
/// (`u < 2^(1/64) - 1 < 0.0109`) to `u^6` (truncation `< u^7/7 < 3·10^-15`).
/// Absolute error below `10^-12`.
#[inline]
const fn ln_int(n: u128) -> u128 {
    debug_assert!(n != 0);
    let top = 127 - n.leading_zeros();
    // Mantissa, Q63 in [1, 2).
    let m = if top >= 63 { (n >> (top - 63)) as u64 } else { (n as u64) << (63 - top) };
    // The largest a ≤ 63 with 2^(a/64) ≤ m: at most 2 above the guess.
    let a0 = LOG2_64THS_GUESS[((m >> 57) & 63) as usize] as usize;
    let a = a0 + (EXP2_64THS_Q63[a0 + 1] <= m) as usize + (EXP2_64THS_Q63[a0 + 2] <= m) as usize;
    let a = if a > 63 { 63 } else { a };
    let rho = if a == 0 { m } else { mul_hi(m, EXP2_NEG_64THS_Q64[a]) };
    // u in Q64.
    let u = rho.saturating_sub(1 << 63) << 1;
    // ln(1+u) = u(1 - u(1/2 - u(1/3 - … u/6))), Q63.
    let mut s = LN_COEF_Q63[5];
    let mut k = 5;
    while k > 0 {
        k -= 1;
        s = LN_COEF_Q63[k] - mul_hi(u, s);
    }
    let l = ((u as u128 * s as u128) >> 63) as u64;
    let int = top as u128 * LN2_Q64 as u128 + (a as u128 * LN2_Q64 as u128) / 64;
    int + l as u128
}

/// A thread's fair-share state: its scaled runtime `rtt = R·c` on its CPU
/// (an integer: units of `1/c` of `τ`·`NORMAL/w`), the CPU's
/// renormalisation epoch it was last synced to, and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runtime {
    rtt: u64,
    epoch: u32,
    weight: Weight,
    /// `weight.inv_q32()`, cached: no division on the charge path.
    inv: u64,
    /// `ln(inv)` in Q32, cached: one `ln` fewer in `time_until`.
    ln_inv_q32: u64,
}

impl Runtime {
    /// A new thread: runtime 0 (see the module docs for why this is safe).
    pub const fn new(weight: Weight) -> Self {
        let inv = weight.inv_q32();
        Runtime { rtt: 0, epoch: 0, weight, inv, ln_inv_q32: (ln_int(inv as u128) >> 32) as u64 }
    }

    /// The thread's weight.
    pub const fn weight(&self) -> Weight {
        self.weight
    }

    /// Changes the weight; takes effect for future CPU time.
    pub fn set_weight(&mut self, weight: Weight) {
        *self = Runtime { rtt: self.rtt, epoch: self.epoch, ..Runtime::new(weight) };
    }

    /// The scaled runtime (fixed point, see [`Runtime`]); comparable only
    /// between runtimes synced to the same CPU ([`Fair::sync`]).
    pub const fn scaled(&self) -> u64 {
        self.rtt
    }
}

/// A runtime taken off one CPU for migration ([`Fair::export`]), independent
/// of that CPU's normaliser: `R = rtt/c` in Q32 (OSv's `export_runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedRuntime {
    r_q32: u64,
    weight: Weight,
}

impl ExportedRuntime {
    /// The thread's weight.
    pub const fn weight(&self) -> Weight {
        self.weight
    }
}

/// Whether charging time renormalised the CPU's scale: every runtime queued
/// on the CPU must then be re-synced (`RunQueue::resync`).
#[must_use = "a renormalisation invalidates the run queue's order keys"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renormalized(pub bool);

/// One CPU's fair-policy state: the decay normaliser `c` and its epoch.
#[derive(Clone, Debug)]
pub struct Fair {
    params: FairParams,
    /// The normaliser, in `[C_MIN, C_MAX)`: `⌊2^l⌋`.
    c: u64,
    /// `log2 c` in Q64, kept exactly (the sum of the charges' exponents):
    /// `c` is recomputed from it, so `time_until` knows `ln c` for free.
    l: u128,
    /// Renormalisations so far (each one a `2^-16` step).
    epoch: u32,
    /// `2^(64+s)·log2(e)/τ`: `y = Δ/(τ·ln 2)` in Q64 is `(Δ·m) >> s`.
    m: u64,
    s: u32,
    /// `FORGET_TAUS·τ`.
    forget: u64,
}

impl Fair {
    /// A CPU's policy state.
    ///
    /// # Panics
    /// If `params.tau` is shorter than 2 ns.
    pub fn new(params: FairParams) -> Self {
        let tau = params.tau.0;
        assert!(tau >= 2, "tau must be at least 2 ns");
        // The largest s ≤ 58 with m < 2^64 (s ≤ 58 keeps Δ·m < 2^128 for
        // every Δ below the forget threshold).
        let mut s = 58;
        let m = loop {
            let m = (u128::from(LOG2E_Q63) << (s + 1)) / u128::from(tau);
            if m >> 64 == 0 || s == 0 {
                break m as u64;
            }
            s -= 1;
        };
        Fair { params, c: C_MIN, l: L_MIN, epoch: 0, m, s, forget: tau.saturating_mul(FORGET_TAUS) }
    }

    /// The tunables.
    pub fn params(&self) -> FairParams {
        self.params
    }

    /// Brings a runtime from an older epoch of this CPU to the current scale
    /// (a thread that slept through renormalisations, or a new one).
    #[inline]
    pub fn sync(&self, rt: &mut Runtime) {
        let d = self.epoch.wrapping_sub(rt.epoch);
        if d != 0 {
            rt.rtt = if d < FORGET_EPOCHS { rt.rtt >> (RENORM_BITS * d) } else { 0 };
            rt.epoch = self.epoch;
        }
    }

    /// Charges `ran` of CPU time to the running thread (OSv's
    /// `thread_runtime::ran_for`): the normaliser grows by `e^{ran/τ}` and
    /// the thread's runtime by the growth over its weight. Integer only:
    /// `l += ran/(τ·ln 2)`, `c = ⌊2^l⌋` with `2^frac(l)` from
    /// `exp2_frac_q63`; the thread gets `(c_new - c_old)·NORMAL/w`.
    pub fn charge(&mut self, rt: &mut Runtime, ran: Nanos) -> Renormalized {
        self.sync(rt);
        if ran.0 >= self.forget {
            // Everything older than `ran` has decayed below the resolution;
            // the thread's usage is a full τ.
            self.epoch = self.epoch.wrapping_add(FORGET_EPOCHS);
            self.c = C_MIN;
            self.l = L_MIN;
            rt.rtt = ((u128::from(C_MIN) * u128::from(rt.inv)) >> 32) as u64;
            rt.epoch = self.epoch;
            return Renormalized(true);
        }
        let y = (u128::from(ran.0) * u128::from(self.m)) >> self.s; // Q64, < 35·2^64
        let mut l = self.l + y; // log2 of the new c, in [32, 83)
        let k = (l >> 64) as u32;
        let g = u128::from(exp2_frac_q63(l as u64)); // Q63
                                                     // ⌊2^l⌋ = ⌊g·2^(k-63)⌋ (k ≥ 32: at least 33 significant bits).
        let c = u128::from(self.c);
        // Monotone in `l` already; `max` makes `cnew - c` safe regardless.
        let mut cnew = if k >= 63 { g << (k - 63) } else { g >> (63 - k) }.max(c);
        let mut rtt = u128::from(rt.rtt) + (((cnew - c) * u128::from(rt.inv)) >> 32);
        let mut renorm = false;
        while cnew >= u128::from(C_MAX) {
            cnew >>= RENORM_BITS;
            l -= u128::from(RENORM_BITS) << 64;
            rtt >>= RENORM_BITS;
            self.epoch = self.epoch.wrapping_add(1);
            renorm = true;
        }
        self.c = cnew as u64;
        self.l = l;
        rt.rtt = u64::try_from(rtt).unwrap_or(u64::MAX);
        rt.epoch = self.epoch;
        Renormalized(renorm)
    }

    /// `c·NORMAL/w` for a runtime's weight: the scaled runtime of a thread
    /// whose decayed usage is a full `τ` (at least 1024).
    fn full(&self, rt: &Runtime) -> u128 {
        ((u128::from(self.c) * u128::from(rt.inv)) >> 32).max(1)
    }

    /// The decayed usage `U = R·w` of a (synced) runtime, in nanoseconds:
    /// at most `τ` (up to rounding).
    pub fn decayed_usage(&self, rt: &Runtime) -> Nanos {
        let u = u128::from(rt.rtt) * u128::from(self.params.tau.0) / self.full(rt);
        Nanos(u64::try_from(u).unwrap_or(u64::MAX))
    }

    /// How long `running` may run before its runtime reaches `target`'s
    /// (OSv's `thread_runtime::time_until`), both synced to this CPU.
    ///
    /// `Δ = τ·ln(1 + (rtt_t - rtt_p)/(c·NORMAL/w_p))`, computed in fixed point
    /// (error below `10^-12·τ`) and rounded up by `Δ/2^20 + 3 ns` plus at
    /// most twice the time two units of `rtt` take, so at the returned time
    /// the running thread is no longer ahead.
    pub fn time_until(&self, running: &Runtime, target: &Runtime) -> Nanos {
        if running.rtt >= target.rtt {
            return Nanos::ZERO;
        }
        let d = u128::from(target.rtt - running.rtt);
        let full = self.full(running);
        // ln(1 + d/full) = ln(full + d) - ln(full), no division, with
        // ln(full) = (l - 32)·ln 2 + ln(2^42/w) from the kept `l` and the
        // runtime's cached `ln(2^42/w)`: one `ln` per call.
        let lc = self.l - L_MIN;
        let ln_c = (lc >> 64) * u128::from(LN2_Q64) + u128::from(mul_hi(lc as u64, LN2_Q64));
        let ln_full = ln_c + (u128::from(running.ln_inv_q32) << 32);
        let ln = ln_int(full + d).saturating_sub(ln_full);
        let tau = u128::from(self.params.tau.0);
        let delta = tau * (ln >> 64) + ((tau * (ln & u128::from(u64::MAX))) >> 64);
        // Two rtt units take at most 2τ/full + 1 ns; `full ≥ 1024`.
        let units = (2 * tau) >> (127 - full.leading_zeros());
        let margin = (delta >> 20) + 3 + units;
        Nanos(u64::try_from(delta + margin).unwrap_or(u64::MAX))
    }

    /// The time-slice rule for a thread that was switched in at
    /// `switched_in`: when its fair share ends relative to the queue head
    /// `head`, so the kernel arms a one-shot timer only for that (tickless).
    /// `None` when nothing else is runnable: no preemption timer at all.
    ///
    /// The deadline is `now + time_until(running, head)`, but no earlier than
    /// `switched_in + granularity`.
    pub fn preemption_deadline(
        &self,
        now: Instant,
        switched_in: Instant,
        running: &Runtime,
        head: Option<&Runtime>,
    ) -> Option<Instant> {
        let head = head?;
        let fair_end = now + self.time_until(running, head);
        Some(fair_end.max(switched_in + self.params.granularity))
    }

    /// Whether a thread that just became runnable should preempt the running
    /// one at once (and, across CPUs, be worth an IPI): it ran less, per
    /// unit of weight, recently.
    #[inline]
    pub fn should_preempt(&self, running: &Runtime, woken: &Runtime) -> bool {
        woken.rtt < running.rtt
    }

    /// Takes a runtime off this CPU for migration: its runtime relative to
    /// this CPU's normaliser, which [`Fair::import`] rescales to another's
    /// (OSv's `export_runtime`/`update_after_migration`).
    pub fn export(&self, mut rt: Runtime) -> ExportedRuntime {
        self.sync(&mut rt);
        let r = (u128::from(rt.rtt) << 32) / u128::from(self.c);
        ExportedRuntime { r_q32: u64::try_from(r).unwrap_or(u64::MAX), weight: rt.weight }
    }

    /// Brings a migrated runtime onto this CPU's scale.
    pub fn import(&self, e: ExportedRuntime) -> Runtime {
        let rtt = (u128::from(e.r_q32) * u128::from(self.c)) >> 32;
        let mut rt = Runtime::new(e.weight);
        rt.rtt = u64::try_from(rtt).unwrap_or(u64::MAX);
        rt.epoch = self.epoch;
        rt
    }
}

/// A per-CPU run queue ordered by runtime (ties first-come first-served),
/// holding copyable thread handles `T` (an index or an address).
///
/// A binary min-heap of entries keyed by `(rtt, arrival)` in one vector. No
/// allocation per operation: the vector only grows when more threads are
/// queued at once than ever before (amortised doubling), and not at all
/// within [`RunQueue::with_capacity`]; [`RunQueue::try_insert`] never
/// allocates. `insert` and `pop` are `O(log n)` with hole-based sifting,
/// `peek` is `O(1)`; [`RunQueue::remove`] and [`RunQueue::pop_last`] (for
/// migration, which is rare) are `O(n)`.
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Debug)]
pub struct RunQueue<T> {
    heap: alloc::vec::Vec<Entry<T>>,
    seq: u64,
}

#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Copy, Debug)]
struct Entry<T> {
    /// Arrival number: the tie-break, and the identity a [`QueueKey`] names.
    seq: u64,
    rt: Runtime,
    thread: T,
}

#[cfg(any(test, feature = "alloc"))]
impl<T> Entry<T> {
    #[inline]
    fn key(&self) -> (u64, u64) {
        (self.rt.rtt, self.seq)
    }
}

/// Where a thread sits in a [`RunQueue`], for [`RunQueue::remove`]
/// (migration). Stays valid across [`RunQueue::resync`]; `remove` answers
/// `None` once the thread has left the queue.
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey(u64);

#[cfg(any(test, feature = "alloc"))]
impl<T: Copy> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(any(test, feature = "alloc"))]
impl<T: Copy> RunQueue<T> {
    /// An empty queue (allocates on first use, then only to grow).
    pub const fn new() -> Self {
        RunQueue { heap: alloc::vec::Vec::new(), seq: 0 }
    }

    /// An empty queue that holds `threads` threads without allocating.
    pub fn with_capacity(threads: usize) -> Self {
        RunQueue { heap: alloc::vec::Vec::with_capacity(threads), seq: 0 }
    }

    /// Makes room for `additional` more queued threads than are queued now
    /// (allocates now, so later inserts need not).
    pub fn reserve(&mut self, additional: usize) {
        self.heap.reserve(additional);
    }

    /// How many threads fit without allocating.
    pub fn capacity(&self) -> usize {
        self.heap.capacity()
    }

    /// Queues `thread` with its runtime (synced to this CPU); grows the
    /// queue if it is full.
    pub fn insert(&mut self, rt: Runtime, thread: T) -> QueueKey {
        let seq = self.seq;
        self.seq += 1;
        self.heap.push(Entry { seq, rt, thread });
        self.sift_up(self.heap.len() - 1);
        QueueKey(seq)
    }

    /// Queues `thread` without allocating; gives it back if the queue is at
    /// its [`RunQueue::capacity`].
    pub fn try_insert(&mut self, rt: Runtime, thread: T) -> Result<QueueKey, (Runtime, T)> {
        if self.heap.len() == self.heap.capacity() {
            return Err((rt, thread));
        }
        Ok(self.insert(rt, thread))
    }

    /// The thread that runs next.
    #[inline]
    pub fn peek(&self) -> Option<(&Runtime, &T)> {
        self.heap.first().map(|e| (&e.rt, &e.thread))
    }

    /// Takes the thread that runs next.
    pub fn pop(&mut self) -> Option<(Runtime, T)> {
        if self.heap.is_empty() {
            return None;
        }
        Some(self.take_at(0))
    }

    /// Takes a queued thread out (for migration); `None` if it already left.
    /// `O(n)`.
    pub fn remove(&mut self, key: QueueKey) -> Option<(Runtime, T)> {
        let pos = self.heap.iter().position(|e| e.seq == key.0)?;
        Some(self.take_at(pos))
    }

    /// Takes out the queued thread that would run last (the largest
    /// runtime, latest arrival among equals): the natural one to migrate,
    /// as it would wait longest here. `O(n)`.
    pub fn pop_last(&mut self) -> Option<(Runtime, T)> {
        let (pos, _) = self.heap.iter().enumerate().max_by_key(|(_, e)| e.key())?;
        Some(self.take_at(pos))
    }

    fn take_at(&mut self, pos: usize) -> (Runtime, T) {
        let e = self.heap.swap_remove(pos);
        if pos < self.heap.len() {
            if self.heap[pos].key() < e.key() {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        }
        (e.rt, e.thread)
    }

    fn sift_up(&mut self, mut pos: usize) {
        let e = self.heap[pos];
        let key = e.key();
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[parent].key() <= key {
                break;
            }
            self.heap[pos] = self.heap[parent];
            pos = parent;
        }
        self.heap[pos] = e;
    }

    fn sift_down(&mut self, mut pos: usize) {
        let n = self.heap.len();
        let e = self.heap[pos];
        let key = e.key();
        loop {
            let l = 2 * pos + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].key() < self.heap[l].key() { r } else { l };
            if key <= self.heap[c].key() {
                break;
            }
            self.heap[pos] = self.heap[c];
            pos = c;
        }
        self.heap[pos] = e;
    }

    /// Number of queued threads.
    #[inline]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The queued threads in run order (sorts a copy of the keys: for
    /// inspection, not for the scheduling path).
    pub fn iter(&self) -> impl Iterator<Item = (&Runtime, &T)> {
        let mut order: alloc::vec::Vec<usize> = (0..self.heap.len()).collect();
        order.sort_unstable_by_key(|&i| self.heap[i].key());
        order.into_iter().map(move |i| (&self.heap[i].rt, &self.heap[i].thread))
    }

    /// Re-syncs every queued runtime after the CPU renormalised. Order is
    /// preserved (runtimes that become equal keep arrival order); keys stay
    /// valid. `O(n)`, no allocation.
    pub fn resync(&mut self, fair: &Fair) {
        for e in &mut self.heap {
            fair.sync(&mut e.rt);
        }
        // Shifting keeps `≤` but may tie keys whose arrival order differs
        // from their heap order: restore the heap bottom-up.
        for pos in (0..self.heap.len() / 2).rev() {
            self.sift_down(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_f64() {
        for a in 0..64 {
            let want = f64::powf(2.0, a as f64 / 64.0);
            let got = EXP2_64THS_Q63[a] as f64 / 2f64.powi(63);
            assert!((got - want).abs() < 1e-15, "2^({a}/64)");
            let inv = EXP2_NEG_64THS_Q64[a] as f64 / 2f64.powi(64);
            assert!((inv - 1.0 / want).abs() < 1e-15, "2^(-{a}/64)");
            let j = a as f64 / 64.0;
            assert_eq!(LOG2_64THS_GUESS[a], (64.0 * (1.0 + j).log2()).floor() as u8, "guess {a}");
        }
        assert!((LN2_Q64 as f64 / 2f64.powi(64) - core::f64::consts::LN_2).abs() < 1e-16);
        assert!((LOG2E_Q63 as f64 / 2f64.powi(63) - core::f64::consts::LOG2_E).abs() < 1e-15);
    }

    #[test]
    fn fixed_point_exp2_and_ln_are_accurate() {
        // f64 is only the reference here; the scheduler path is integer.
        for i in 0..=4096u64 {
            let f = (i << 52).wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 12);
            let x = f as f64 / 2f64.powi(64);
            let got = exp2_frac_q63(f) as f64 / 2f64.powi(63);
            let want = 2f64.powf(x);
            assert!(((got - want) / want).abs() < 1e-13, "2^{x}: {got} want {want}");
        }
        for &x in &[1e-12, 1e-9, 1e-4, 0.01, 0.3, 0.69, 1.0, 2.5, 10.0, 1e6, 1e12] {
            let q = (1u128 << 64) + (x * 2f64.powi(64)) as u128;
            let got = (ln_int(q) - 64 * u128::from(LN2_Q64)) as f64 / 2f64.powi(64);
            let want = f64::ln_1p(x);
            assert!((got - want).abs() <= 1e-12 * want + 1e-15, "ln(1+{x}) = {got}, want {want}");
        }
        for n in [1u128, 2, 3, 1000, 1 << 40, (1 << 58) + 12345, u128::from(u64::MAX) * 3] {
            let got = ln_int(n) as f64 / 2f64.powi(64);
            let want = (n as f64).ln();
            assert!((got - want).abs() <= 1e-12 * want.max(1.0), "ln({n}) = {got}, want {want}");
        }
    }

    #[test]
    fn charge_matches_f64_model() {
        // The decayed usage after a random charge sequence, against the
        // closed form U = Σ Δ-weighted decay computed in f64.
        let tau = 200e6;
        let mut fair = Fair::new(FairParams::default());
        let mut a = Runtime::new(Weight::NORMAL);
        let mut b = Runtime::new(Weight::new(3 * 1024).unwrap());
        let (mut ua, mut ub) = (0f64, 0f64);
        let mut seed = 1u64;
        for i in 0..20_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let d = (seed >> 40) % 3_000_000;
            let decay = (-(d as f64) / tau).exp();
            if i % 3 == 0 {
                let _ = fair.charge(&mut a, Nanos(d));
                ua = ua * decay + tau * (1.0 - decay);
                ub *= decay;
            } else {
                let _ = fair.charge(&mut b, Nanos(d));
                ub = ub * decay + tau * (1.0 - decay);
                ua *= decay;
            }
        }
        fair.sync(&mut a);
        fair.sync(&mut b);
        for (rt, u) in [(a, ua), (b, ub)] {
            let got = fair.decayed_usage(&rt).0 as f64;
            assert!((got - u).abs() < 1e-6 * tau + 2.0, "usage {got} want {u}");
        }
    }

    #[test]
    fn decayed_usage_is_bounded_by_tau() {
        let mut fair = Fair::new(FairParams::default());
        let mut rt = Runtime::new(Weight::NORMAL);
        for _ in 0..10_000 {
            let _ = fair.charge(&mut rt, Nanos::from_millis(1));
        }
        let u = fair.decayed_usage(&rt);
        assert!(u <= Nanos::from_millis(200) && u >= Nanos::from_millis(199), "{u:?}");
    }

    #[test]
    fn renormalisation_keeps_order_and_syncs_sleepers() {
        let mut fair = Fair::new(FairParams { tau: Nanos::from_millis(1), granularity: Nanos(1) });
        let mut a = Runtime::new(Weight::NORMAL);
        let mut sleeper = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut sleeper, Nanos::from_micros(100));
        let mut renorms = 0;
        for _ in 0..2000 {
            if fair.charge(&mut a, Nanos::from_millis(1)).0 {
                renorms += 1;
            }
        }
        assert!(renorms >= 2, "{renorms}");
        fair.sync(&mut sleeper);
        assert_eq!(sleeper.scaled(), 0);
        assert!(fair.decayed_usage(&a) > Nanos::from_micros(600));
    }

    #[test]
    fn huge_step_forgets_history() {
        let mut fair = Fair::new(FairParams::default());
        let mut a = Runtime::new(Weight::NORMAL);
        assert!(fair.charge(&mut a, Nanos(u64::MAX / 2)).0);
        assert_eq!(fair.decayed_usage(&a), Nanos::from_millis(200));
    }

    #[test]
    fn time_until_reaches_target() {
        let mut fair = Fair::new(FairParams::default());
        let mut p = Runtime::new(Weight::new(3 * 1024).unwrap());
        let mut h = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut h, Nanos::from_millis(30));
        let d = fair.time_until(&p, &h);
        let mut short = fair.clone();
        let mut q = p;
        let _ = fair.charge(&mut p, d);
        assert!(p.scaled() >= h.scaled());
        // Running a hair less than the answer leaves the thread behind.
        let _ = short.charge(&mut q, Nanos(d.0 * 99 / 100));
        assert!(q.scaled() < h.scaled());
    }

    #[test]
    fn time_until_is_tight_for_all_weights() {
        let mut fair = Fair::new(FairParams::default());
        let mut warm = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut warm, Nanos::from_millis(700));
        for wp in [1u32, 100, 1024, 3000, 8192, 1 << 20, u32::MAX] {
            for (wt, ms) in [(1024u32, 1u64), (1024, 40), (5000, 3), (1, 1)] {
                let mut p = Runtime::new(Weight::new(wp).unwrap());
                let mut t = Runtime::new(Weight::new(wt).unwrap());
                let _ = fair.clone().charge(&mut t, Nanos::from_millis(ms));
                fair.sync(&mut p);
                let d = fair.time_until(&p, &t);
                let mut f = fair.clone();
                let mut q = p;
                let _ = f.charge(&mut q, d);
                f.sync(&mut t);
                assert!(q.scaled() >= t.scaled(), "wp {wp} wt {wt}: {d:?} not enough");
                if d.0 > 10_000 {
                    let mut f = fair.clone();
                    let mut q = p;
                    let _ = f.charge(&mut q, Nanos(d.0 - d.0 / 1000 - 10_000));
                    f.sync(&mut t);
                    assert!(q.scaled() < t.scaled(), "wp {wp} wt {wt}: {d:?} too loose");
                }
            }
        }
    }

    #[test]
    fn export_import_keeps_decayed_usage() {
        let mut a = Fair::new(FairParams::default());
        let mut b = Fair::new(FairParams::default());
        let mut t = Runtime::new(Weight::new(2048).unwrap());
        let mut other = Runtime::new(Weight::NORMAL);
        let _ = a.charge(&mut t, Nanos::from_millis(50));
        let _ = b.charge(&mut other, Nanos::from_millis(3000));
        let moved = b.import(a.export(t));
        let (ua, ub) = (a.decayed_usage(&t).0, b.decayed_usage(&moved).0);
        assert!(ua.abs_diff(ub) <= 1 + ua / 1_000_000, "{ua} vs {ub}");
        assert_eq!(moved.weight(), t.weight());
    }

    #[test]
    fn deadline_respects_granularity_and_tickless() {
        let fair = Fair::new(FairParams::default());
        let p = Runtime::new(Weight::NORMAL);
        let now = Instant(1_000_000_000);
        assert_eq!(fair.preemption_deadline(now, now, &p, None), None);
        assert_eq!(fair.preemption_deadline(now, now, &p, Some(&p)), Some(now + Nanos::from_millis(1)));
    }

    #[cfg(any(test, feature = "alloc"))]
    #[test]
    fn run_queue_orders_by_runtime_then_fifo() {
        let mut fair = Fair::new(FairParams::default());
        let mut q = RunQueue::new();
        let mut big = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut big, Nanos::from_millis(5));
        q.insert(big, 1u32);
        q.insert(Runtime::new(Weight::NORMAL), 2);
        q.insert(Runtime::new(Weight::NORMAL), 3);
        let order: std::vec::Vec<u32> = core::iter::from_fn(|| q.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn run_queue_with_capacity_does_not_grow() {
        let mut q = RunQueue::with_capacity(3);
        let cap = q.capacity();
        assert!(cap >= 3);
        for i in 0..cap {
            assert!(q.try_insert(Runtime::new(Weight::NORMAL), i).is_ok());
        }
        assert!(q.try_insert(Runtime::new(Weight::NORMAL), 99).is_err());
        assert_eq!(q.pop().map(|p| p.1), Some(0));
        assert!(q.try_insert(Runtime::new(Weight::NORMAL), 7).is_ok());
        assert_eq!(q.capacity(), cap);
        assert_eq!(q.pop_last().map(|p| p.1), Some(7));
    }
}
