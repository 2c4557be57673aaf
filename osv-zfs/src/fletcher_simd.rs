//! Fletcher4 with AVX2, chosen at run time.
//!
//! The same sums as [`fletcher_4_scalar`](crate::checksum::fletcher_4_scalar)
//! (`fletcher_4_native`/`_byteswap`, module/zcommon/zfs_fletcher.c), computed
//! the way OpenZFS's `fletcher_4_avx2` does (module/zcommon/zfs_fletcher_intel.c):
//! the running sums `a`, `b`, `c`, `d` are kept per lane in 64-bit vector
//! elements, each 32-bit word zero-extended into its lane, and the lanes are
//! combined once at the end (OpenZFS's `fletcher_4_avx2_fini`). Here two
//! 16-byte groups are taken per step (eight lanes in two sets of four
//! registers), so the two sets' additions are independent; the combination
//! formulas below are derived for any lane count `N` and used with `N = 8`.
//!
//! The CPU is asked once (CPUID for AVX2 and OSXSAVE, XGETBV for the SSE and
//! AVX register state being enabled by the kernel); without them, or off
//! x86-64, [`fletcher_4`] returns `None` and the caller uses its portable
//! loop. This is the one module of the crate with `unsafe` code: the
//! intrinsics' loads and the calls into `#[target_feature]` functions.
#![allow(unsafe_code)]

/// Fletcher4 sums `[a, b, c, d]` of `data`'s whole 32-bit words (a trailing
/// partial word is ignored), big-endian words if `big`; `None` when the CPU
/// (or the kernel's XCR0) does not allow AVX2.
pub(crate) fn fletcher_4(data: &[u8], big: bool) -> Option<[u64; 4]> {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(test)]
        if tests::PORTABLE_ONLY.get() {
            return None;
        }
        if x86::avx2_usable() {
            // SAFETY: `avx2_usable` checked that the CPU has AVX2 and that
            // the OS enabled the AVX register state (XCR0), the only
            // precondition of calling these `#[target_feature]` functions.
            return Some(unsafe {
                if big {
                    x86::sums::<true>(data)
                } else {
                    x86::sums::<false>(data)
                }
            });
        }
    }
    let _ = (data, big);
    None
}

/// Lanes processed together: two sets of four 64-bit elements.
const LANES: usize = 8;

/// The coefficients that turn lane `i`'s sums (of `N` lanes) into its
/// share of the single pass's `[b, c, d]`, as `[[b], [c, b, a],
/// [d, c, b, a]]` multipliers (two's complement for the negative ones).
///
/// Derivation. Over `m` words `w_j`, the single pass gives `A = Σ w_j`,
/// `B = Σ k w_j`, `C = Σ C(k + 1, 2) w_j`, `D = Σ C(k + 2, 3) w_j` with
/// `k = m - j` the word's distance from the end. Lane `i` holds the words
/// `j = N t + i`; with `T = m / N` groups and `u = T - t` (the distance
/// inside the lane) its sums are `a_i = Σ w`, `b_i = Σ u w`,
/// `c_i = Σ C(u + 1, 2) w`, `d_i = Σ C(u + 2, 3) w`, and `k = N u - i`.
/// Writing each weight of `k` as a polynomial in `u` and that in the basis
/// `1, u, C(u + 1, 2), C(u + 2, 3)` (using `u² = 2 C(u + 1, 2) - u` and
/// `u³ = 6 C(u + 2, 3) - 6 C(u + 1, 2) + u`):
///
/// - `k = N u - i`, so `B += N b_i - i a_i`;
/// - `C(k + 1, 2) = N² C(u + 1, 2) - (N² + 2 N i - N) / 2 · u + C(i, 2)`,
///   so `C += N² c_i - (N² + 2Ni - N)/2 · b_i + C(i, 2) a_i`;
/// - `C(k + 2, 3) = N³ C(u + 2, 3) - (N³ - N² + N² i) C(u + 1, 2)
///   + (N³ - 3N² + 3N² i + 3N i² - 6N i + 2N) / 6 · u - C(i, 3)`, so `D`
///   takes those multiples of `d_i`, `c_i`, `b_i`, `a_i`.
///
/// With `N = 4` these are the coefficients of `checksum::lanes4` and of
/// `fletcher_4_superscalar4_fini` (module/zcommon/zfs_fletcher_superscalar4.c).
/// All of it is linear with integer coefficients, so it holds modulo 2^64:
/// wrapping lane sums combine to the wrapping single-pass sums.
const fn coefficients(n: usize, i: usize) -> [[u64; 4]; 3] {
    let (n, i) = (n as i64, i as i64);
    let n2 = n * n;
    let n3 = n2 * n;
    let c_i_2 = i * (i - 1) / 2;
    let c_i_3 = i * (i - 1) * (i - 2) / 6;
    [
        [n as u64, (-i) as u64, 0, 0],
        [n2 as u64, (-(n2 + 2 * n * i - n) / 2) as u64, c_i_2 as u64, 0],
        [
            n3 as u64,
            (-(n3 - n2 + n2 * i)) as u64,
            ((n3 - 3 * n2 + 3 * n2 * i + 3 * n * i * i - 6 * n * i + 2 * n) / 6) as u64,
            (-c_i_3) as u64,
        ],
    ]
}

/// [`coefficients`] of each of the [`LANES`] lanes.
const COEFFICIENTS: [[[u64; 4]; 3]; LANES] = {
    let mut t = [[[0; 4]; 3]; LANES];
    let mut i = 0;
    while i < LANES {
        t[i] = coefficients(LANES, i);
        i += 1;
    }
    t
};

/// The single-pass sums `[a, b, c, d]` of the words whose lane sums are
/// `lanes[i] = [a_i, b_i, c_i, d_i]` (lane `i` of [`LANES`]).
fn combine(lanes: &[[u64; 4]; LANES]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for ([a, b, c, d], [kb, kc, kd]) in lanes.iter().zip(COEFFICIENTS.iter()) {
        out[0] = out[0].wrapping_add(*a);
        out[1] = out[1].wrapping_add(kb[0].wrapping_mul(*b)).wrapping_add(kb[1].wrapping_mul(*a));
        out[2] = out[2]
            .wrapping_add(kc[0].wrapping_mul(*c))
            .wrapping_add(kc[1].wrapping_mul(*b))
            .wrapping_add(kc[2].wrapping_mul(*a));
        out[3] = out[3]
            .wrapping_add(kd[0].wrapping_mul(*d))
            .wrapping_add(kd[1].wrapping_mul(*c))
            .wrapping_add(kd[2].wrapping_mul(*b))
            .wrapping_add(kd[3].wrapping_mul(*a));
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{combine, LANES};
    use core::arch::x86_64::{
        __cpuid, __cpuid_count, __m128i, __m256i, _mm256_add_epi64, _mm256_broadcastsi128_si256,
        _mm256_cvtepu32_epi64, _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8,
        _mm256_storeu_si256, _mm_loadu_si128, _xgetbv,
    };
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 0: not asked yet, 1: AVX2 unusable, 2: usable.
    static AVX2: AtomicU8 = AtomicU8::new(0);

    /// Whether AVX2 code may run here; the CPU is asked once. A race
    /// between first callers only asks twice and stores the same answer.
    pub(super) fn avx2_usable() -> bool {
        match AVX2.load(Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => {
                let usable = detect();
                AVX2.store(if usable { 2 } else { 1 }, Ordering::Relaxed);
                usable
            }
        }
    }

    /// CPUID and XCR0 bits (Intel SDM vol. 2A, CPUID leaves 01H and 07H;
    /// vol. 1 §13.3 "Enabling the XSAVE feature set"; §14.3 "Detection of
    /// Intel AVX instructions").
    fn detect() -> bool {
        const OSXSAVE: u32 = 1 << 27; // CPUID.01H:ECX
        const AVX: u32 = 1 << 28; // CPUID.01H:ECX
        const AVX2: u32 = 1 << 5; // CPUID.(EAX=07H, ECX=0):EBX
        const XCR0_SSE_AVX: u64 = 0b110; // XCR0 bits 1 (SSE) and 2 (AVX)
        if __cpuid(0).eax < 7 {
            return false;
        }
        let leaf1 = __cpuid_count(1, 0);
        if leaf1.ecx & (OSXSAVE | AVX) != OSXSAVE | AVX || __cpuid_count(7, 0).ebx & AVX2 == 0 {
            return false;
        }
        // SAFETY: CPUID.01H:ECX.OSXSAVE is set, so the OS has set
        // CR4.OSXSAVE and XGETBV is available (`xcr0`'s only requirement).
        let xcr0 = unsafe { xcr0() };
        xcr0 & XCR0_SSE_AVX == XCR0_SSE_AVX
    }

    /// XCR0, the register state the OS saves (and thus enabled).
    #[target_feature(enable = "xsave")]
    fn xcr0() -> u64 {
        // SAFETY: XGETBV with ECX = 0 only reads XCR0; the `xsave` target
        // feature (checked by the caller via OSXSAVE) makes it available.
        unsafe { _xgetbv(0) }
    }

    /// Sixteen bytes as four 64-bit lanes holding their 32-bit words,
    /// byte-swapped first if `BIG`.
    #[target_feature(enable = "avx2")]
    fn words<const BIG: bool>(group: &[u8; 16]) -> __m256i {
        let p = group.as_ptr().cast::<__m128i>();
        // SAFETY: `group` is 16 readable bytes; `loadu` has no alignment
        // requirement.
        let v = unsafe { _mm_loadu_si128(p) };
        if BIG {
            // Both halves get the 16 bytes; each picks its two words
            // reversed into the low half of its 64-bit lanes (-128: zero).
            const Z: i8 = -128;
            let swap = _mm256_setr_epi8(
                3, 2, 1, 0, Z, Z, Z, Z, 7, 6, 5, 4, Z, Z, Z, Z, //
                11, 10, 9, 8, Z, Z, Z, Z, 15, 14, 13, 12, Z, Z, Z, Z,
            );
            _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(v), swap)
        } else {
            _mm256_cvtepu32_epi64(v)
        }
    }

    /// The four 64-bit lanes of `v`.
    #[target_feature(enable = "avx2")]
    fn lanes(v: __m256i) -> [u64; 4] {
        let mut out = [0u64; 4];
        // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment
        // requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }

    /// Fletcher4 of `data`'s whole words (big-endian if `BIG`): 32 bytes per
    /// step into two independent sets of four lanes, the lanes combined,
    /// then the remaining words one at a time.
    #[target_feature(enable = "avx2")]
    pub(super) fn sums<const BIG: bool>(data: &[u8]) -> [u64; 4] {
        let z = _mm256_setzero_si256();
        let (mut a0, mut b0, mut c0, mut d0) = (z, z, z, z);
        let (mut a1, mut b1, mut c1, mut d1) = (z, z, z, z);
        let (groups, _) = data.as_chunks::<16>();
        let pairs = groups.chunks_exact(2);
        let rest = &data[pairs.len() * 32..];
        for pair in pairs {
            let [g0, g1] = pair else { continue };
            let (w0, w1) = (words::<BIG>(g0), words::<BIG>(g1));
            a0 = _mm256_add_epi64(a0, w0);
            a1 = _mm256_add_epi64(a1, w1);
            b0 = _mm256_add_epi64(b0, a0);
            b1 = _mm256_add_epi64(b1, a1);
            c0 = _mm256_add_epi64(c0, b0);
            c1 = _mm256_add_epi64(c1, b1);
            d0 = _mm256_add_epi64(d0, c0);
            d1 = _mm256_add_epi64(d1, c1);
        }
        let mut per_lane = [[0u64; 4]; LANES];
        for (set, (a, b, c, d)) in [(a0, b0, c0, d0), (a1, b1, c1, d1)].into_iter().enumerate() {
            let (a, b, c, d) = (lanes(a), lanes(b), lanes(c), lanes(d));
            for k in 0..4 {
                per_lane[4 * set + k] = [a[k], b[k], c[k], d[k]];
            }
        }
        let [mut a, mut b, mut c, mut d] = combine(&per_lane);
        for word in rest.chunks_exact(4) {
            let w = [word[0], word[1], word[2], word[3]];
            let v = if BIG { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) };
            a = a.wrapping_add(u64::from(v));
            b = b.wrapping_add(a);
            c = c.wrapping_add(b);
            d = d.wrapping_add(c);
        }
        [a, b, c, d]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fletcher_4_scalar;
    use crate::Endian;

    std::thread_local! {
        /// Set by a test to make [`fletcher_4`] decline on its thread, so
        /// that the portable lanes of `checksum` are tested too.
        pub(super) static PORTABLE_ONLY: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    fn simple(data: &[u8], big: bool) -> [u64; 4] {
        fletcher_4_scalar(data, if big { Endian::Big } else { Endian::Little }).0
    }

    /// What std's detection says (AVX2 and its OS support).
    fn has_avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    #[test]
    fn detection_agrees_with_std() {
        assert_eq!(fletcher_4(&[], false).is_some(), has_avx2());
    }

    #[test]
    fn coefficients_for_four_lanes_are_the_superscalar4_ones() {
        // checksum::lanes4 (and fletcher_4_superscalar4_fini) for N = 4.
        for (i, kb) in [4u64, 10, 20, 34].into_iter().enumerate() {
            let iu = i as u64;
            let want = [
                [4, 0u64.wrapping_sub(iu), 0, 0],
                [16, 0u64.wrapping_sub(6 + 4 * iu), iu * iu.saturating_sub(1) / 2, 0],
                [64, 0u64.wrapping_sub(48 + 16 * iu), kb, 0u64.wrapping_sub(u64::from(i == 3))],
            ];
            assert_eq!(coefficients(4, i), want, "lane {i}");
        }
    }

    #[test]
    fn combine_of_single_words_in_each_lane() {
        // One group of eight words 1..=8: lane i holds word i + 1 once
        // (u = 1, so a_i = b_i = c_i = d_i = w).
        let mut per_lane = [[0u64; 4]; LANES];
        let mut bytes = [0u8; 32];
        for i in 0..LANES {
            let w = i as u64 + 1;
            per_lane[i] = [w; 4];
            bytes[4 * i..4 * i + 4].copy_from_slice(&(w as u32).to_le_bytes());
        }
        assert_eq!(combine(&per_lane), simple(&bytes, false));
    }

    #[test]
    fn fixed_vectors() {
        // Words 1, 2: a = 3, b = 4, c = 5, d = 6 (as in the crate docs).
        let two = [1, 0, 0, 0, 2, 0, 0, 0];
        let Some(sums) = fletcher_4(&two, false) else {
            assert!(!has_avx2(), "AVX2 present but not used");
            std::println!("no AVX2 here: the SIMD path is not exercised");
            return;
        };
        assert_eq!(sums, [3, 4, 5, 6]);
        assert_eq!(fletcher_4(&[0, 0, 0, 1, 0, 0, 0, 2], true), Some([3, 4, 5, 6]));
        assert_eq!(fletcher_4(&[], false), Some([0; 4]));
        // Words 1..=12 (48 bytes: one 32-byte step, then four single
        // words): a = Σ w = 78, b = Σ (13 - w) w = 364, c = Σ C(14 - w, 2) w
        // = 1365, d = Σ C(15 - w, 3) w = 4368, i.e. C(13, 2), C(14, 3),
        // C(15, 4), C(16, 5).
        let le: std::vec::Vec<u8> = (1u32..=12).flat_map(u32::to_le_bytes).collect();
        let be: std::vec::Vec<u8> = (1u32..=12).flat_map(u32::to_be_bytes).collect();
        assert_eq!(fletcher_4(&le, false), Some([78, 364, 1365, 4368]));
        assert_eq!(fletcher_4(&be, true), Some([78, 364, 1365, 4368]));
        // A trailing partial word is ignored, as by the scalar loop.
        assert_eq!(fletcher_4(&le[..47], false), fletcher_4(&le[..44], false));
    }

    proptest::proptest! {
        /// The AVX2 sums equal the one-word loop for any length (any
        /// remainder modulo 32 and 4) and data, in both byte orders.
        #[test]
        fn simd_equals_the_scalar_loop(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200),
            big in proptest::prelude::any::<bool>(),
        ) {
            match fletcher_4(&data, big) {
                Some(sums) => proptest::prop_assert_eq!(sums, simple(&data, big)),
                None => proptest::prop_assert!(!has_avx2()),
            }
        }

        /// With the SIMD path declined, `checksum::fletcher_4` (its
        /// portable four lanes) still equals the one-word loop.
        #[test]
        fn portable_lanes_equal_the_scalar_loop(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200),
            big in proptest::prelude::any::<bool>(),
        ) {
            let endian = if big { Endian::Big } else { Endian::Little };
            PORTABLE_ONLY.set(true);
            let declined = fletcher_4(&data, big).is_none();
            let sums = crate::checksum::fletcher_4(&data, endian).0;
            PORTABLE_ONLY.set(false);
            proptest::prop_assert!(declined);
            proptest::prop_assert_eq!(sums, simple(&data, big));
        }

        /// All-ones words make every lane sum large: the wrapping
        /// combination still agrees.
        #[test]
        fn simd_wraps_like_the_scalar_loop(words in 0usize..40_000, big in proptest::prelude::any::<bool>()) {
            let data = std::vec![0xffu8; words * 4];
            match fletcher_4(&data, big) {
                Some(sums) => proptest::prop_assert_eq!(sums, simple(&data, big)),
                None => proptest::prop_assert!(!has_avx2()),
            }
        }
    }
}
