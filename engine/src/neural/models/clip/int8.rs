//! 8-bit matmuls for the encoder's linear layers on CPUs with AVX-512 VNNI or
//! AVX-VNNI (the 256-bit form: Alder Lake and later desktops, which have no
//! AVX-512), an opt-in trade of accuracy for speed
//! ([`super::VisionPrecision::Int8`]).
//!
//! Weights are quantized once, symmetric per output column; activations per row on
//! every call. `vpdpbusd` multiplies unsigned by signed bytes, 64 products summed
//! into 16 i32 lanes per instruction, four times the f32 FMA's work per cycle here;
//! the activations are therefore stored offset by 128 as unsigned bytes and the
//! offset's contribution (`128 · Σₖ w`) is taken back per column afterwards. The sums
//! are exact in i32 (`k · 255 · 127` fits for `k` below 66 000), so the only error
//! is the two roundings to 8 bits.
//!
//! Layout: the weight is cut into panels of [`PANEL`] output columns; within a
//! panel, each group of four inputs holds the panel's columns one after another,
//! four bytes each, which is what one `vpdpbusd` takes per 16 columns.

use rayon::prelude::*;

/// Output columns per panel: four 16-lane registers.
const PANEL: usize = 64;
/// Rows per tile: 6 × 4 accumulators, 4 weight registers and a broadcast fit the
/// 32 vector registers.
const ROWS: usize = 6;

/// The integer kernels, by the instructions they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// 512-bit `vpdpbusd`: six rows by a whole panel per tile.
    Avx512Vnni,
    /// 256-bit `vpdpbusd` (16 registers): two rows by half a panel at a time.
    AvxVnni,
}

/// The kernel this CPU runs: AVX-512 VNNI where it has it (twice the work per
/// instruction), else AVX-VNNI, else none. `VIDMUSICIAN_Q8_KERNEL=avx-vnni`
/// (the decoder's setting, [`crate::neural::kernels`]) takes AVX-VNNI where
/// both are there, to compare them on one machine.
fn kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        static CHOSEN: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni");
            let avx = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni");
            let asked = std::env::var("VIDMUSICIAN_Q8_KERNEL")
                .ok()
                .and_then(|v| crate::neural::kernels::Q8Kernel::parse(&v))
                == Some(crate::neural::kernels::Q8Kernel::AvxVnni);
            match (avx512, avx) {
                (_, true) if asked => Some(Kernel::AvxVnni),
                (true, _) => Some(Kernel::Avx512Vnni),
                (false, true) => Some(Kernel::AvxVnni),
                (false, false) => None,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// A column's dequantization factor from its largest magnitude (1 for a
/// zero column), the same for either layout the weight comes in.
fn column_scale(max: f32) -> f32 {
    if max > 0.0 { max / 127.0 } else { 1.0 }
}

/// A weight over its column's scale as a byte: to nearest, ties to even (as
/// the vector conversion rounds), within ±127.
fn quantize(x: f32) -> i8 {
    x.round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Quantizes output column `w` (its inputs' factors, times `inv`) into
/// `lane` of `panel`, laid out as [`Int8Weight`] says. Returns the sum of
/// its bytes.
fn quantize_column(w: &[f32], inv: f32, panel: &mut [i8], lane: usize) -> i32 {
    assert!(lane < PANEL && panel.len() >= w.len().div_ceil(4) * PANEL * 4);
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is there; the panel holds every group of the column
        // (asserted above).
        return unsafe { quantize_column_avx2(w, inv, panel, lane) };
    }
    quantize_column_portable(w, inv, panel, lane)
}

fn quantize_column_portable(w: &[f32], inv: f32, panel: &mut [i8], lane: usize) -> i32 {
    let mut sum = 0i32;
    for (g, four) in w.chunks(4).enumerate() {
        let at = g * PANEL * 4 + lane * 4;
        for (dst, x) in panel[at..at + four.len()].iter_mut().zip(four) {
            *dst = quantize(x * inv);
            sum += i32::from(*dst);
        }
    }
    sum
}

/// [`quantize_column_portable`] eight inputs (two groups) at a time: the
/// scalar rounding call was most of a load in 8 bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_column_avx2(w: &[f32], inv: f32, panel: &mut [i8], lane: usize) -> i32 {
    use std::arch::x86_64::*;
    let whole = w.len() / 8 * 8;
    let scale = _mm256_set1_ps(inv);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let mut sums = _mm256_setzero_si256();
    for j in (0..whole).step_by(8) {
        // SAFETY: `j + 8 ≤ w.len()`; groups `j / 4` and `j / 4 + 1` lie in
        // the panel, their lane's four bytes at `lane * 4`.
        unsafe {
            let x = _mm256_mul_ps(_mm256_loadu_ps(w.as_ptr().add(j)), scale);
            let q = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(x), lo), hi);
            sums = _mm256_add_epi32(sums, q);
            // Within each 128-bit half: four i32 → four i16 → four i8.
            let b = _mm256_packs_epi16(_mm256_packs_epi32(q, q), q);
            let at = (j / 4) * PANEL * 4 + lane * 4;
            let dst = panel.as_mut_ptr();
            dst.add(at)
                .cast::<i32>()
                .write_unaligned(_mm256_extract_epi32::<0>(b));
            dst.add(at + PANEL * 4)
                .cast::<i32>()
                .write_unaligned(_mm256_extract_epi32::<4>(b));
        }
    }
    let mut lanes = [0i32; 8];
    // SAFETY: eight i32 stored into eight.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums) };
    let tail = &w[whole..];
    let mut rest = [0i8; 8];
    let mut sum: i32 = lanes.iter().sum();
    for (k, x) in tail.iter().enumerate() {
        rest[k] = quantize(x * inv);
        sum += i32::from(rest[k]);
    }
    for (g, four) in rest[..tail.len()].chunks(4).enumerate() {
        let at = (whole / 4 + g) * PANEL * 4 + lane * 4;
        panel[at..at + four.len()].copy_from_slice(four);
    }
    sum
}

/// Whether this CPU runs an integer kernel.
pub(super) fn available() -> bool {
    kernel().is_some()
}

/// The integer kernel's name, for reports: `avx512-vnni`, `avx-vnni`, or
/// `none`.
pub(crate) fn kernel_name() -> &'static str {
    match kernel() {
        Some(Kernel::Avx512Vnni) => "avx512-vnni",
        Some(Kernel::AvxVnni) => "avx-vnni",
        None => "none",
    }
}

/// A weight quantized and packed for [`Int8Weight::matmul`].
pub(super) struct Int8Weight {
    /// Inputs and outputs.
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4 (the padding is zero).
    kp: usize,
    /// `(n / PANEL) × (kp / 4) × PANEL × 4` bytes; padded columns are zero.
    packed: Vec<i8>,
    /// Per column (padded to whole panels): the dequantization factor, and
    /// `128 · Σₖ w` to take back the activations' offset.
    scale: Vec<f32>,
    offset: Vec<i32>,
}

impl Int8Weight {
    /// Quantizes `wt`, `(k, n)` row-major (inputs × outputs). `None` when the sums
    /// could overflow i32 (an input wider than any CLIP has).
    pub(super) fn new(wt: &[f32], k: usize, n: usize) -> Option<Self> {
        if k == 0 || n == 0 || wt.len() != k * n || k > 65_000 {
            return None;
        }
        // A panel per task, its weight read row by row: `wt` is row-major, so
        // walking it a column at a time (as the layout is written) strides
        // through the whole matrix once per column, most of a checkpoint's load.
        Some(Self::by_panels(k, n, |p, packed, scale, offset| {
            let c0 = p * PANEL;
            let cols = PANEL.min(n - c0);
            let rows = || wt.chunks_exact(n).map(|row| &row[c0..c0 + cols]);
            let mut max = [0f32; PANEL];
            for row in rows() {
                for (m, w) in max.iter_mut().zip(row) {
                    *m = m.max(w.abs());
                }
            }
            let mut inv = [0f32; PANEL];
            for ((s, i), m) in scale.iter_mut().zip(&mut inv).zip(&max).take(cols) {
                *s = column_scale(*m);
                *i = 1.0 / *s;
            }
            for (r, row) in rows().enumerate() {
                let group = &mut packed[(r / 4) * PANEL * 4..(r / 4 + 1) * PANEL * 4];
                for (lane, (w, i)) in row.iter().zip(&inv).enumerate() {
                    let q = quantize(w * i);
                    group[lane * 4 + r % 4] = q;
                    offset[lane] += 128 * i32::from(q);
                }
            }
        }))
    }

    /// Quantizes the weight whose output column `c` holds the `k` inputs'
    /// factors `column(c)`, for `c < n`: PyTorch's `(out, in)` layout, read
    /// row by row straight from a checkpoint's mapping, with no transposed
    /// f32 copy made first. The same bytes as [`Int8Weight::new`] of its
    /// transpose. `None` as there, or when a column is not `k` long.
    pub(super) fn from_columns<'a>(
        k: usize,
        n: usize,
        column: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> Option<Self> {
        if k == 0 || n == 0 || k > 65_000 || (0..n).any(|c| column(c).len() != k) {
            return None;
        }
        Some(Self::by_panels(k, n, |p, packed, scale, offset| {
            let c0 = p * PANEL;
            for lane in 0..PANEL.min(n - c0) {
                let w = column(c0 + lane);
                let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                let s = column_scale(max);
                scale[lane] = s;
                offset[lane] = 128 * quantize_column(w, 1.0 / s, packed, lane);
            }
        }))
    }

    /// The `k × n` weight laid out by `panel(p, bytes, scales, offsets)`, which
    /// fills panel `p` (columns `p · PANEL…`; those past `n` stay zero), a
    /// panel per task.
    fn by_panels(
        k: usize,
        n: usize,
        panel: impl Fn(usize, &mut [i8], &mut [f32], &mut [i32]) + Sync,
    ) -> Self {
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(PANEL) * PANEL;
        let mut scale = vec![0f32; np];
        let mut packed = vec![0i8; np * kp];
        let mut offset = vec![0i32; np];
        packed
            .par_chunks_mut(kp * PANEL)
            .zip(scale.par_chunks_mut(PANEL))
            .zip(offset.par_chunks_mut(PANEL))
            .enumerate()
            .for_each(|(p, ((packed, scale), offset))| panel(p, packed, scale, offset));
        Self {
            k,
            n,
            kp,
            packed,
            scale,
            offset,
        }
    }

    /// `x Wᵀ` for `x`, `m × k` row-major, into `m × n`.
    pub(super) fn matmul(&self, x: &[f32], m: usize, then: Then<'_>) -> Vec<f32> {
        let (k, kp, n) = (self.k, self.kp, self.n);
        debug_assert_eq!(x.len(), m * k);
        // Each row to bytes: scaled by its largest magnitude, offset by 128.
        // Rows padded to whole tiles (the padding is zero, 128 offset), so every tile
        // runs the one six-row kernel.
        let mut a = vec![128u8; m.div_ceil(ROWS) * ROWS * kp];
        let mut a_scale = vec![0f32; m];
        a.par_chunks_mut(kp)
            .zip(a_scale.par_iter_mut())
            .zip(x.par_chunks(k))
            .for_each(|((q, s), x)| *s = quantize_row(x, q));
        let mut out = vec![0f32; m * n];
        let panels = n.div_ceil(PANEL);
        let dst = SendPtr(out.as_mut_ptr());
        (0..panels).into_par_iter().for_each(|p| {
            let dst = &dst;
            let w = &self.packed[p * kp * PANEL..(p + 1) * kp * PANEL];
            let c0 = p * PANEL;
            let cols = PANEL.min(n - c0);
            let mut acc = [[0i32; PANEL]; ROWS];
            for r0 in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - r0);
                tile(&a[r0 * kp..(r0 + ROWS) * kp], kp, w, &mut acc);
                for (i, acc) in acc.iter().enumerate().take(rows) {
                    let r = r0 + i;
                    // SAFETY: each panel's task writes only its own columns
                    // `c0..c0 + cols` of row `r < m` of `out` (`m × n`), which
                    // outlives the parallel loop.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(dst.0.add(r * n + c0), cols) };
                    dequantize(
                        &acc[..cols],
                        &self.offset[c0..c0 + cols],
                        &self.scale[c0..c0 + cols],
                        a_scale[r],
                        row,
                    );
                    then.apply(row, r * n + c0, c0);
                }
            }
        });
        out
    }
}

impl candle_core::CustomOp1 for Int8Weight {
    fn name(&self) -> &'static str {
        "int8-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = super::ops::slice(storage, layout, "an 8-bit matmul")?;
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            candle_core::bail!("an 8-bit matmul of {} inputs given {k}", self.k);
        }
        let out = self.matmul(x, m, Then::Nothing);
        Ok((candle_core::CpuStorage::F32(out), (m, self.n).into()))
    }
}

/// One row of activations to bytes, scaled by its largest magnitude and offset by
/// 128; returns the scale. `q` is at least as long as `x` (the rest stays 128, zero).
fn quantize_row(x: &[f32], q: &mut [u8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && q.len() >= x.len() {
            // SAFETY: the CPU has AVX2; `q` is at least as long as `x`.
            unsafe { x86::quantize(x, inv, q) };
            return scale;
        }
    }
    // `|v · inv| ≤ 127` but for rounding; the clamp keeps the byte in range. The
    // sign-matched half and the cast round half away from zero without a libm call.
    for (q, &v) in q.iter_mut().zip(x) {
        *q = byte(v * inv);
    }
    scale
}

/// A scaled activation to its offset byte, rounded half away from zero.
fn byte(y: f32) -> u8 {
    let y = y.clamp(-127.0, 127.0);
    ((y + 0.5f32.copysign(y)) as i32 + 128) as u8
}

/// `row[j] = (acc[j] − offset[j]) · a_scale · scale[j]`: the integer sums back to
/// the product's scale.
fn dequantize(acc: &[i32], offset: &[i32], scale: &[f32], a_scale: f32, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = row.len();
        if is_x86_feature_detected!("avx2")
            && acc.len() >= n
            && offset.len() >= n
            && scale.len() >= n
        {
            // SAFETY: the CPU has AVX2; every input is at least `row`'s length.
            unsafe { x86::dequantize(acc, offset, scale, a_scale, row) };
            return;
        }
    }
    for (((o, &v), &off), &s) in row.iter_mut().zip(acc).zip(offset).zip(scale) {
        *o = (v - off) as f32 * (a_scale * s);
    }
}

/// What [`Int8Weight::matmul`] does to each product while it is in cache, in place
/// of a pass of its own over the whole output: the layer's bias and activation, or
/// its bias and the residual sum. The arithmetic is [`super::ops`]'.
#[derive(Clone, Copy)]
pub(super) enum Then<'a> {
    Nothing,
    /// `y + b`, through quick GELU when the flag is set.
    Bias(&'a [f32], bool),
    /// `x + (y + b)`, `x` of the output's shape.
    Residual(&'a [f32], &'a [f32]),
}

impl Then<'_> {
    /// Applies to `row`, the output's columns from `col` at flat index `at`.
    fn apply(self, row: &mut [f32], at: usize, col: usize) {
        match self {
            Then::Nothing => {}
            Then::Bias(b, quick) => {
                for (y, &b) in row.iter_mut().zip(&b[col..]) {
                    let v = *y + b;
                    *y = if quick {
                        v / (1.0 + (-1.702 * v).exp())
                    } else {
                        v
                    };
                }
            }
            Then::Residual(b, x) => {
                for ((y, &b), &x) in row.iter_mut().zip(&b[col..]).zip(&x[at..]) {
                    *y = x + (*y + b);
                }
            }
        }
    }

    /// Whether the bias and residual fit an output of `m × n`.
    fn fits(self, m: usize, n: usize) -> bool {
        match self {
            Then::Nothing => true,
            Then::Bias(b, _) => b.len() == n,
            Then::Residual(b, x) => b.len() == n && x.len() == m * n,
        }
    }
}

/// [`Int8Weight::matmul`] with its bias and what follows, as a candle op: over
/// `(h, bias)`, or `(h, bias, x)` for the residual.
pub(super) struct Fused<'a> {
    pub(super) w: &'a Int8Weight,
    /// Quick GELU after the bias (two inputs only).
    pub(super) quick: bool,
}

impl Fused<'_> {
    fn run(
        &self,
        h: (&candle_core::CpuStorage, &candle_core::Layout),
        then: impl FnOnce(&[f32], usize) -> candle_core::Result<Vec<f32>>,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let v = super::ops::slice(h.0, h.1, "an 8-bit matmul")?;
        let (m, k) = h.1.shape().dims2()?;
        if k != self.w.k {
            candle_core::bail!("an 8-bit matmul of {} inputs given {k}", self.w.k);
        }
        let out = then(v, m)?;
        Ok((candle_core::CpuStorage::F32(out), (m, self.w.n).into()))
    }
}

impl candle_core::CustomOp2 for Fused<'_> {
    fn name(&self) -> &'static str {
        "int8-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        hs: &candle_core::CpuStorage,
        hl: &candle_core::Layout,
        bs: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let b = super::ops::slice(bs, bl, "an 8-bit matmul")?;
        self.run((hs, hl), |h, m| {
            let then = Then::Bias(b, self.quick);
            if !then.fits(m, self.w.n) {
                candle_core::bail!("a bias of {} for {} outputs", b.len(), self.w.n);
            }
            Ok(self.w.matmul(h, m, then))
        })
    }
}

impl candle_core::CustomOp3 for Fused<'_> {
    fn name(&self) -> &'static str {
        "int8-matmul-residual"
    }

    fn cpu_fwd(
        &self,
        hs: &candle_core::CpuStorage,
        hl: &candle_core::Layout,
        bs: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let b = super::ops::slice(bs, bl, "an 8-bit matmul")?;
        let x = super::ops::slice(xs, xl, "an 8-bit matmul")?;
        self.run((hs, hl), |h, m| {
            let then = Then::Residual(b, x);
            if !then.fits(m, self.w.n) {
                candle_core::bail!(
                    "a residual of {:?} for {m} × {} outputs",
                    xl.shape(),
                    self.w.n
                );
            }
            Ok(self.w.matmul(h, m, then))
        })
    }
}

/// A pointer handed to the panels' tasks, each of which writes disjoint elements.
struct SendPtr(*mut f32);
// SAFETY: see the one use above: tasks write disjoint elements.
unsafe impl Sync for SendPtr {}

/// `acc[i][j] = Σₖ a[i][k] · w[k][j]` for [`ROWS`] rows of `a` (`kp` bytes each)
/// and one packed panel `w`.
fn tile(a: &[u8], kp: usize, w: &[i8], acc: &mut [[i32; PANEL]; ROWS]) {
    assert!(a.len() >= ROWS * kp && w.len() >= kp * PANEL && kp.is_multiple_of(4));
    #[cfg(target_arch = "x86_64")]
    match kernel() {
        // SAFETY: the CPU has the features, and the lengths are checked above.
        Some(Kernel::Avx512Vnni) => return unsafe { x86::tile(a, kp, w, acc) },
        // SAFETY: as above.
        Some(Kernel::AvxVnni) => return unsafe { x86::tile_avx_vnni(a, kp, w, acc) },
        None => {}
    }
    tile_portable(a, kp, w, acc);
}

/// [`tile`] without SIMD: the same sums, for CPUs without VNNI (callers check
/// [`available`] first; this keeps the module correct without it).
fn tile_portable(a: &[u8], kp: usize, w: &[i8], acc: &mut [[i32; PANEL]; ROWS]) {
    for (i, acc) in acc.iter_mut().enumerate() {
        acc.fill(0);
        for g in 0..kp / 4 {
            for (j, o) in acc.iter_mut().enumerate() {
                for t in 0..4 {
                    *o +=
                        i32::from(a[i * kp + g * 4 + t]) * i32::from(w[g * PANEL * 4 + j * 4 + t]);
                }
            }
        }
    }
}

/// The AVX-512 kernel is in assembly (written when the crate still built with
/// Rust 1.85, before AVX-512 intrinsics were stable); the AVX-VNNI one uses
/// intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, ROWS};

    /// Six rows by 64 columns: 24 accumulators in `zmm8`–`zmm31`, the panel's four
    /// registers of weights per group of four inputs in `zmm0`–`zmm3`, each row's
    /// four bytes broadcast into `zmm4`.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VNNI; `a` holds six rows of `kp` bytes, `kp` a
    /// multiple of 4, and `w` `kp / 4` groups of 256 bytes.
    pub(super) unsafe fn tile(a: &[u8], kp: usize, w: &[i8], out: &mut [[i32; PANEL]; ROWS]) {
        let groups = kp / 4;
        if groups == 0 {
            *out = [[0; PANEL]; ROWS];
            return;
        }
        // SAFETY: per the function's contract; the loop reads `groups` groups of
        // each row and of the panel, and writes the 6 × 64 i32 of `out`.
        unsafe {
            std::arch::asm!(
                "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9",
                "vpxord zmm10, zmm10, zmm10",
                "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12",
                "vpxord zmm13, zmm13, zmm13",
                "vpxord zmm14, zmm14, zmm14",
                "vpxord zmm15, zmm15, zmm15",
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18",
                "vpxord zmm19, zmm19, zmm19",
                "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21",
                "vpxord zmm22, zmm22, zmm22",
                "vpxord zmm23, zmm23, zmm23",
                "vpxord zmm24, zmm24, zmm24",
                "vpxord zmm25, zmm25, zmm25",
                "vpxord zmm26, zmm26, zmm26",
                "vpxord zmm27, zmm27, zmm27",
                "vpxord zmm28, zmm28, zmm28",
                "vpxord zmm29, zmm29, zmm29",
                "vpxord zmm30, zmm30, zmm30",
                "vpxord zmm31, zmm31, zmm31",
                "2:",
                "vmovdqu64 zmm0, [rdx]",
                "vmovdqu64 zmm1, [rdx + 64]",
                "vmovdqu64 zmm2, [rdx + 128]",
                "vmovdqu64 zmm3, [rdx + 192]",
                "vpbroadcastd zmm4, dword ptr [rsi]",
                "vpdpbusd zmm8, zmm4, zmm0",
                "vpdpbusd zmm9, zmm4, zmm1",
                "vpdpbusd zmm10, zmm4, zmm2",
                "vpdpbusd zmm11, zmm4, zmm3",
                "vpbroadcastd zmm4, dword ptr [rsi + r8]",
                "vpdpbusd zmm12, zmm4, zmm0",
                "vpdpbusd zmm13, zmm4, zmm1",
                "vpdpbusd zmm14, zmm4, zmm2",
                "vpdpbusd zmm15, zmm4, zmm3",
                "vpbroadcastd zmm4, dword ptr [rsi + r8 * 2]",
                "vpdpbusd zmm16, zmm4, zmm0",
                "vpdpbusd zmm17, zmm4, zmm1",
                "vpdpbusd zmm18, zmm4, zmm2",
                "vpdpbusd zmm19, zmm4, zmm3",
                "vpbroadcastd zmm4, dword ptr [rdi]",
                "vpdpbusd zmm20, zmm4, zmm0",
                "vpdpbusd zmm21, zmm4, zmm1",
                "vpdpbusd zmm22, zmm4, zmm2",
                "vpdpbusd zmm23, zmm4, zmm3",
                "vpbroadcastd zmm4, dword ptr [rdi + r8]",
                "vpdpbusd zmm24, zmm4, zmm0",
                "vpdpbusd zmm25, zmm4, zmm1",
                "vpdpbusd zmm26, zmm4, zmm2",
                "vpdpbusd zmm27, zmm4, zmm3",
                "vpbroadcastd zmm4, dword ptr [rdi + r8 * 2]",
                "vpdpbusd zmm28, zmm4, zmm0",
                "vpdpbusd zmm29, zmm4, zmm1",
                "vpdpbusd zmm30, zmm4, zmm2",
                "vpdpbusd zmm31, zmm4, zmm3",
                "add rsi, 4",
                "add rdi, 4",
                "add rdx, 256",
                "dec rcx",
                "jnz 2b",
                "vmovdqu32 [r9], zmm8",
                "vmovdqu32 [r9 + 64], zmm9",
                "vmovdqu32 [r9 + 128], zmm10",
                "vmovdqu32 [r9 + 192], zmm11",
                "vmovdqu32 [r9 + 256], zmm12",
                "vmovdqu32 [r9 + 320], zmm13",
                "vmovdqu32 [r9 + 384], zmm14",
                "vmovdqu32 [r9 + 448], zmm15",
                "vmovdqu32 [r9 + 512], zmm16",
                "vmovdqu32 [r9 + 576], zmm17",
                "vmovdqu32 [r9 + 640], zmm18",
                "vmovdqu32 [r9 + 704], zmm19",
                "vmovdqu32 [r9 + 768], zmm20",
                "vmovdqu32 [r9 + 832], zmm21",
                "vmovdqu32 [r9 + 896], zmm22",
                "vmovdqu32 [r9 + 960], zmm23",
                "vmovdqu32 [r9 + 1024], zmm24",
                "vmovdqu32 [r9 + 1088], zmm25",
                "vmovdqu32 [r9 + 1152], zmm26",
                "vmovdqu32 [r9 + 1216], zmm27",
                "vmovdqu32 [r9 + 1280], zmm28",
                "vmovdqu32 [r9 + 1344], zmm29",
                "vmovdqu32 [r9 + 1408], zmm30",
                "vmovdqu32 [r9 + 1472], zmm31",
                "vzeroupper",
                // Rows 0–2 from `rsi`, 3–5 from `rdi`, `r8` bytes apart.
                inout("rsi") a.as_ptr() => _,
                inout("rdi") a.as_ptr().add(3 * kp) => _,
                in("r8") kp,
                inout("rdx") w.as_ptr() => _,
                inout("rcx") groups => _,
                in("r9") out.as_mut_ptr(),
                // Every vector register (the vector ones the compiler knows of) is
                // the caller's to save under the C ABI; the kernel uses 0–4, 8–31.
                clobber_abi("C"),
                options(nostack),
            );
        }
    }

    /// [`super::tile`] with AVX-VNNI, which has sixteen 256-bit registers: the
    /// panel in two halves of 32 columns, two rows at a time, so eight
    /// accumulators, the half's four registers of weights per group of four
    /// inputs and one broadcast of a row's four bytes.
    ///
    /// # Safety
    /// The CPU has AVX2 and AVX-VNNI; `a` holds six rows of `kp` bytes, `kp` a
    /// multiple of 4, and `w` `kp / 4` groups of 256 bytes.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile_avx_vnni(
        a: &[u8],
        kp: usize,
        w: &[i8],
        out: &mut [[i32; PANEL]; ROWS],
    ) {
        use std::arch::x86_64::*;
        let groups = kp / 4;
        for r in (0..ROWS).step_by(2) {
            for half in 0..2 {
                let mut acc = [[_mm256_setzero_si256(); 4]; 2];
                for g in 0..groups {
                    // SAFETY: group `g` of the panel is 256 bytes from
                    // `g · 256`, and rows `r`, `r + 1` hold `kp` bytes.
                    unsafe {
                        let wp = w.as_ptr().add(g * PANEL * 4 + half * PANEL * 2);
                        let wv = [0, 1, 2, 3].map(|j| _mm256_loadu_si256(wp.add(j * 32).cast()));
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let four = a.as_ptr().add((r + i) * kp + g * 4).cast::<i32>();
                            let x = _mm256_set1_epi32(four.read_unaligned());
                            for (o, w) in acc.iter_mut().zip(wv) {
                                *o = _mm256_dpbusd_avx_epi32(*o, x, w);
                            }
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    for (j, v) in acc.iter().enumerate() {
                        let at = half * PANEL / 2 + j * 8;
                        // SAFETY: columns `at..at + 8` lie within the row's 64.
                        unsafe { _mm256_storeu_si256(out[r + i][at..].as_mut_ptr().cast(), *v) };
                    }
                }
            }
        }
    }

    /// `q[i] = round(x[i] · inv) + 128`, for `q` at least as long as `x`; eight at
    /// a time (nearest, ties to even), the rest as the portable path.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize(x: &[f32], inv: f32, q: &mut [u8]) {
        use std::arch::x86_64::*;
        let vinv = _mm256_set1_ps(inv);
        let off = _mm256_set1_epi32(128);
        let lim = _mm256_set1_ps(127.0);
        let neg = _mm256_set1_ps(-127.0);
        // Over `x`'s length only, so that the two tails match.
        let q = &mut q[..x.len()];
        let mut xs = x.chunks_exact(8);
        let mut qs = q.chunks_exact_mut(8);
        for (x, q) in (&mut xs).zip(&mut qs) {
            // SAFETY: `x` holds 8 floats.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vinv), neg), lim);
            let v = _mm256_add_epi32(_mm256_cvtps_epi32(v), off);
            // Within each 128-bit lane, i32 → u16 → u8: the lane's four bytes end up
            // in its low 32 bits.
            let p = _mm256_packus_epi16(_mm256_packus_epi32(v, v), _mm256_setzero_si256());
            let lo = _mm256_cvtsi256_si32(p) as u32;
            let hi = _mm256_extract_epi32::<4>(p) as u32;
            q[..4].copy_from_slice(&lo.to_le_bytes());
            q[4..].copy_from_slice(&hi.to_le_bytes());
        }
        for (q, &v) in qs.into_remainder().iter_mut().zip(xs.remainder()) {
            *q = super::byte(v * inv);
        }
    }

    /// `row[j] = (acc[j] − offset[j]) · a_scale · scale[j]`, eight at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dequantize(
        acc: &[i32],
        offset: &[i32],
        scale: &[f32],
        a_scale: f32,
        row: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let a = _mm256_set1_ps(a_scale);
        let n = row.len() / 8 * 8;
        for j in (0..n).step_by(8) {
            // SAFETY: `j + 8 ≤ row.len()`, no longer than the inputs.
            unsafe {
                let v = _mm256_sub_epi32(
                    _mm256_loadu_si256(acc.as_ptr().add(j).cast()),
                    _mm256_loadu_si256(offset.as_ptr().add(j).cast()),
                );
                let s = _mm256_mul_ps(a, _mm256_loadu_ps(scale.as_ptr().add(j)));
                _mm256_storeu_ps(
                    row.as_mut_ptr().add(j),
                    _mm256_mul_ps(_mm256_cvtepi32_ps(v), s),
                );
            }
        }
        for j in n..row.len() {
            row[j] = (acc[j] - offset[j]) as f32 * (a_scale * scale[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantized product is the f32 product within the 8-bit roundings, for
    /// shapes that leave partial panels, tiles and input groups.
    #[test]
    fn int8_matmul_is_close_to_f32() {
        let (m, k, n) = (13, 37, 70);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
            .collect();
        let wt: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 90.0)
            .collect();
        let q = Int8Weight::new(&wt, k, n).unwrap();
        let got = q.matmul(&x, m, Then::Nothing);
        let mut err = 0f32;
        let mut norm = 0f32;
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * wt[i * n + c]).sum();
                err += (got[r * n + c] - want).powi(2);
                norm += want * want;
            }
        }
        let rel = (err / norm).sqrt();
        assert!(rel < 0.02, "relative error {rel}");
    }

    /// The panels, scales and offsets are those of the layout's definition,
    /// written a column at a time, from either layout of the weight, for
    /// shapes that leave partial panels and input groups, with a zero column
    /// and an input wider than a group.
    #[test]
    fn quantized_weights_are_laid_out_as_defined() {
        for (k, n) in [(1, 1), (5, 3), (37, 70), (64, 130)] {
            let mut wt: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 90.0)
                .collect();
            for r in 0..k {
                wt[r * n + n / 2] = 0.0;
            }
            let q = Int8Weight::new(&wt, k, n).unwrap();
            let (kp, np) = (k.div_ceil(4) * 4, n.div_ceil(PANEL) * PANEL);
            let mut packed = vec![0i8; np * kp];
            let mut scale = vec![0f32; np];
            let mut offset = vec![0i32; np];
            for c in 0..n {
                let max = (0..k).map(|r| wt[r * n + c].abs()).fold(0f32, f32::max);
                scale[c] = if max > 0.0 { max / 127.0 } else { 1.0 };
                for r in 0..k {
                    let v = (wt[r * n + c] * (1.0 / scale[c]))
                        .round_ties_even()
                        .clamp(-127.0, 127.0) as i8;
                    packed[(c / PANEL) * kp * PANEL
                        + (r / 4) * PANEL * 4
                        + (c % PANEL) * 4
                        + r % 4] = v;
                    offset[c] += 128 * i32::from(v);
                }
            }
            assert_eq!(q.scale, scale, "{k}×{n}");
            assert_eq!(q.offset, offset, "{k}×{n}");
            assert_eq!(q.packed, packed, "{k}×{n}");
            // The same weight as PyTorch stores it, `(out, in)`.
            let w: Vec<f32> = (0..n * k).map(|i| wt[(i % k) * n + i / k]).collect();
            let r = Int8Weight::from_columns(k, n, |c| &w[c * k..(c + 1) * k]).unwrap();
            assert_eq!(r.scale, scale, "{k}×{n} from columns");
            assert_eq!(r.offset, offset, "{k}×{n} from columns");
            assert_eq!(r.packed, packed, "{k}×{n} from columns");
        }
        assert!(Int8Weight::from_columns(3, 2, |_| &[1.0, 2.0][..]).is_none());
    }

    /// The vector quantizer (where this CPU has one) writes the bytes and
    /// sums the portable one does, ties and out-of-range values included.
    #[test]
    fn the_portable_column_quantizer_equals_the_vector_one() {
        for k in [1usize, 3, 8, 13, 768] {
            let w: Vec<f32> = (0..k)
                .map(|i| match i % 5 {
                    0 => 2.5,
                    1 => -0.5,
                    _ => ((i * 37 % 101) as f32 - 50.0) / 7.0,
                })
                .collect();
            let groups = k.div_ceil(4);
            for lane in [0, 5, PANEL - 1] {
                let (mut a, mut b) = (vec![0i8; groups * PANEL * 4], vec![0i8; groups * PANEL * 4]);
                let sa = quantize_column(&w, 9.0, &mut a, lane);
                let sb = quantize_column_portable(&w, 9.0, &mut b, lane);
                assert_eq!((sa, &a), (sb, &b), "k {k}, lane {lane}");
            }
        }
    }

    #[test]
    fn the_portable_tile_equals_the_vector_one() {
        let kp = 12;
        let a: Vec<u8> = (0..ROWS * kp).map(|i| (i * 29 % 256) as u8).collect();
        let w: Vec<i8> = (0..kp * PANEL).map(|i| (i * 13 % 255) as i8).collect();
        let mut fast = [[0i32; PANEL]; ROWS];
        tile(&a, kp, &w, &mut fast);
        let mut slow = [[0i32; PANEL]; ROWS];
        for (i, row) in slow.iter_mut().enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                for g in 0..kp / 4 {
                    for t in 0..4 {
                        *o += i32::from(a[i * kp + g * 4 + t])
                            * i32::from(w[g * PANEL * 4 + j * 4 + t]);
                    }
                }
            }
        }
        assert_eq!(fast, slow);
        let mut portable = [[0i32; PANEL]; ROWS];
        tile_portable(&a, kp, &w, &mut portable);
        assert_eq!(portable, slow);
    }

    /// Both vector kernels, whichever one [`tile`] picks here, against the
    /// portable sums at the bytes' extremes (255 · ±127, no overflow).
    #[test]
    fn each_vnni_tile_equals_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        {
            let kp = 768;
            let a: Vec<u8> = (0..ROWS * kp)
                .map(|i| {
                    if i % 7 == 0 {
                        255
                    } else {
                        (i * 29 % 256) as u8
                    }
                })
                .collect();
            let w: Vec<i8> = (0..kp * PANEL)
                .map(|i| match i % 11 {
                    0 => 127,
                    1 => -127,
                    _ => (i * 13 % 255) as i8,
                })
                .collect();
            let mut want = [[0i32; PANEL]; ROWS];
            tile_portable(&a, kp, &w, &mut want);
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni");
            let avx = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni");
            if avx512 {
                let mut got = [[0i32; PANEL]; ROWS];
                // SAFETY: the CPU has the features; the lengths are as above.
                unsafe { x86::tile(&a, kp, &w, &mut got) };
                assert_eq!(got, want, "avx512-vnni");
            } else {
                eprintln!("skipped: this CPU has no AVX-512 VNNI");
            }
            if avx {
                let mut got = [[0i32; PANEL]; ROWS];
                // SAFETY: as above.
                unsafe { x86::tile_avx_vnni(&a, kp, &w, &mut got) };
                assert_eq!(got, want, "avx-vnni");
            } else {
                eprintln!("skipped: this CPU has no AVX-VNNI");
            }
        }
    }
}
