//! CPU kernels for the decoder's step: a matrix-vector product that reads each
//! weight once for every row it serves (both guidance branches in one pass over the
//! weights, which is what bounds a decoder step), and the small vector operations
//! around it. AVX2/FMA is chosen at run time; other CPUs take a portable path the
//! compiler vectorises.

use rayon::prelude::*;

/// Below this many weights a product runs on the calling thread: splitting it
/// would cost more than it saves.
const PARALLEL_MIN: usize = 1 << 16;

/// `ys[r][o] = Σ_i w[o·n + i] · xs[r][i]` for a row-major `w` of `out × n`.
/// Each weight row is read once for all rows of `xs`.
pub fn gemv(w: &[f32], n: usize, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    let out = w.len().checked_div(n).unwrap_or(0);
    debug_assert_eq!(xs.len(), ys.len());
    debug_assert!(xs.iter().all(|x| x.len() == n));
    debug_assert!(ys.iter().all(|y| y.len() == out));
    if w.len() < PARALLEL_MIN {
        gemv_range(w, n, xs, ys);
        return;
    }
    split_outputs(out, ys, &|start, part| {
        let rows = part[0].len();
        gemv_range(&w[start * n..(start + rows) * n], n, xs, part);
    });
}

/// Runs `f(first_output, outputs)` on one contiguous block of outputs per thread (in
/// multiples of 8), every row of `ys` split at the same places.
fn split_outputs(out: usize, ys: &mut [&mut [f32]], f: &(dyn Fn(usize, &mut [&mut [f32]]) + Sync)) {
    let threads = rayon::current_num_threads().max(1);
    let block = out.div_ceil(threads).div_ceil(8).max(1) * 8;
    let mut parts: Vec<Vec<&mut [f32]>> = (0..out.div_ceil(block)).map(|_| Vec::new()).collect();
    for y in ys.iter_mut() {
        for (part, chunk) in parts.iter_mut().zip(y.chunks_mut(block)) {
            part.push(chunk);
        }
    }
    parts
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut part)| f(i * block, &mut part));
}

fn gemv_range(w: &[f32], n: usize, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { x86::gemv_avx2(w, n, xs, ys) };
            return;
        }
    }
    gemv_portable(w, n, xs, ys);
}

fn gemv_portable(w: &[f32], n: usize, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    for (o, row) in w.chunks_exact(n).enumerate() {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            y[o] = dot(row, x);
        }
    }
}

/// Weights per scale in [`Q8`] rows.
pub const Q8_BLOCK: usize = 32;

/// A row-major matrix in 8 bits: every block of [`Q8_BLOCK`] weights of a row is
/// `scale · q` with `q` in −127..=127, a quarter of the bytes of f32 for the
/// matrix-vector products that bound a decoder step.
pub struct Q8 {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub out: usize,
    pub inn: usize,
}

impl Q8 {
    /// Quantises `w` (`out × inn`, `inn` a multiple of [`Q8_BLOCK`]) to the nearest
    /// level of each block's scale.
    pub fn quantize(w: &[f32], out: usize, inn: usize) -> Option<Self> {
        if inn % Q8_BLOCK != 0 || w.len() != out * inn {
            return None;
        }
        let (q, scales) = quantize_blocks(w);
        Some(Self {
            q,
            scales,
            out,
            inn,
        })
    }

    /// The f32 matrix these weights stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .chunks_exact(Q8_BLOCK)
            .zip(&self.scales)
            .flat_map(|(b, s)| b.iter().map(move |&v| f32::from(v) * s))
            .collect()
    }
}

/// Each block of [`Q8_BLOCK`] values as `scale · q`, `q` in −127..=127 rounded to
/// nearest (weights and inputs alike).
fn quantize_blocks(v: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(v.len() / Q8_BLOCK);
    for block in v.chunks_exact(Q8_BLOCK) {
        let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            block
                .iter()
                .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// [`gemv`] over 8-bit weights.
pub fn gemv_q8(w: &Q8, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    let (out, n) = (w.out, w.inn);
    let per_row = n / Q8_BLOCK;
    if out * n < PARALLEL_MIN * 4 {
        gemv_q8_range(&w.q, &w.scales, n, xs, ys);
        return;
    }
    split_outputs(out, ys, &|start, part| {
        let rows = part[0].len();
        gemv_q8_range(
            &w.q[start * n..(start + rows) * n],
            &w.scales[start * per_row..(start + rows) * per_row],
            n,
            xs,
            part,
        );
    });
}

fn gemv_q8_range(q: &[i8], scales: &[f32], n: usize, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { x86::gemv_q8_avx2(q, scales, n, xs, ys) };
            return;
        }
    }
    let per_row = n / Q8_BLOCK;
    for (o, (row, sc)) in q
        .chunks_exact(n)
        .zip(scales.chunks_exact(per_row))
        .enumerate()
    {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            let mut acc = 0f32;
            for ((b, s), xb) in row
                .chunks_exact(Q8_BLOCK)
                .zip(sc)
                .zip(x.chunks_exact(Q8_BLOCK))
            {
                let d: f32 = b.iter().zip(xb).map(|(&w, &x)| f32::from(w) * x).sum();
                acc += d * s;
            }
            y[o] = acc;
        }
    }
}

/// A dot product in eight independent lanes, which the compiler vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86::dot_avx2(a, b) };
        }
    }
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += x * y;
    }
    sum
}

/// `y += a · x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// LayerNorm of `x` into `out`, with weight and bias (PyTorch's, biased variance).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * inv * w[i] + b[i];
    }
}

/// Exact (erf) GELU in place, as PyTorch's default `gelu`.
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bytes ahead of the current weight row that are prefetched: the stream is
    /// sequential, but the hint keeps more loads in flight than the hardware
    /// prefetcher alone.
    const AHEAD: usize = 1024;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: callers guarantee the CPU features; every pointer read is
        // bounded by the slice lengths checked in the loops.
        unsafe {
            let n = a.len().min(b.len());
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut i = 0;
            while i + 16 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            while i + 8 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(acc0, acc1));
            while i < n {
                s += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            s
        }
    }

    /// The input rows in 8 bits, a scale per block, as [`gemv_q8_avx2`] reads them:
    /// `(|x| as u8 blocks, x itself for its signs, scales)`.
    pub struct QuantRow {
        q: Vec<i8>,
        abs: Vec<i8>,
        scales: Vec<f32>,
    }

    pub fn quantize_row(x: &[f32]) -> QuantRow {
        let (q, scales) = super::quantize_blocks(x);
        // |q| fits in 0..=127, read as the unsigned operand of `maddubs`.
        let abs = q.iter().map(|v| v.abs()).collect();
        QuantRow { q, abs, scales }
    }

    /// [`super::gemv_q8`]'s rows in integers: each block of 32 weights is multiplied
    /// with the 8-bit input block by `maddubs` (|x| · sign-adjusted w, pairs summed to
    /// 16 bits, then to 32), and the block's integer sum is scaled once by both
    /// scales. One or two input rows share each load of a weight block.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // `o` indexes the weights by pointer too
    pub unsafe fn gemv_q8_avx2(
        q: &[i8],
        scales: &[f32],
        n: usize,
        xs: &[&[f32]],
        ys: &mut [&mut [f32]],
    ) {
        // SAFETY: callers guarantee the CPU features; `n` is a multiple of the
        // block size and every read stays inside `q`, `scales` and the rows.
        unsafe {
            let per_row = n / super::Q8_BLOCK;
            let out = q.len() / n;
            let end = q.as_ptr().add(q.len());
            let rows: Vec<QuantRow> = xs.iter().map(|x| quantize_row(x)).collect();
            let ones = _mm256_set1_epi16(1);
            let mut r = 0;
            while r < rows.len() {
                let two = r + 1 < rows.len();
                let x0 = &rows[r];
                let x1 = if two { &rows[r + 1] } else { x0 };
                for o in 0..out {
                    let row = q.as_ptr().add(o * n);
                    let sc = scales.as_ptr().add(o * per_row);
                    let mut s0 = _mm256_setzero_ps();
                    let mut s1 = _mm256_setzero_ps();
                    for b in 0..per_row {
                        let base = b * super::Q8_BLOCK;
                        let p = row.add(base + AHEAD);
                        if p < end {
                            _mm_prefetch(p, _MM_HINT_T0);
                        }
                        let w = _mm256_loadu_si256(row.add(base) as *const __m256i);
                        let ws = *sc.add(b);
                        let xa = _mm256_loadu_si256(x0.q.as_ptr().add(base) as *const __m256i);
                        let aa = _mm256_loadu_si256(x0.abs.as_ptr().add(base) as *const __m256i);
                        let dot = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w, xa)),
                            ones,
                        );
                        s0 = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(dot),
                            _mm256_set1_ps(ws * *x0.scales.as_ptr().add(b)),
                            s0,
                        );
                        if two {
                            let xb = _mm256_loadu_si256(x1.q.as_ptr().add(base) as *const __m256i);
                            let ab =
                                _mm256_loadu_si256(x1.abs.as_ptr().add(base) as *const __m256i);
                            let dot = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(ab, _mm256_sign_epi8(w, xb)),
                                ones,
                            );
                            s1 = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(dot),
                                _mm256_set1_ps(ws * *x1.scales.as_ptr().add(b)),
                                s1,
                            );
                        }
                    }
                    ys[r][o] = hsum(s0);
                    if two {
                        ys[r + 1][o] = hsum(s1);
                    }
                }
                r += 2;
            }
        }
    }

    /// One weight row against one or two input rows per pass; more rows are done
    /// two at a time.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // `o` indexes the weights by pointer too
    pub unsafe fn gemv_avx2(w: &[f32], n: usize, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
        // SAFETY: callers guarantee the CPU features; every pointer read is
        // bounded by the slice lengths checked in the loops.
        unsafe {
            let out = w.len() / n;
            let mut r = 0;
            while r < xs.len() {
                let two = r + 1 < xs.len();
                let x0 = xs[r].as_ptr();
                let x1 = if two { xs[r + 1].as_ptr() } else { x0 };
                for o in 0..out {
                    let row = w.as_ptr().add(o * n);
                    let ahead = (row as *const i8).add(AHEAD);
                    let end = w.as_ptr().add(w.len()) as *const i8;
                    let mut a0 = _mm256_setzero_ps();
                    let mut a1 = _mm256_setzero_ps();
                    let mut b0 = _mm256_setzero_ps();
                    let mut b1 = _mm256_setzero_ps();
                    let mut i = 0;
                    while i + 16 <= n {
                        if (i & 15) == 0 {
                            let p = ahead.add(i * 4);
                            if p < end {
                                _mm_prefetch(p, _MM_HINT_T0);
                            }
                        }
                        let w0 = _mm256_loadu_ps(row.add(i));
                        let w1 = _mm256_loadu_ps(row.add(i + 8));
                        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0.add(i)), a0);
                        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0.add(i + 8)), a1);
                        if two {
                            b0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1.add(i)), b0);
                            b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1.add(i + 8)), b1);
                        }
                        i += 16;
                    }
                    let mut s0 = hsum(_mm256_add_ps(a0, a1));
                    let mut s1 = hsum(_mm256_add_ps(b0, b1));
                    while i < n {
                        let wv = *row.add(i);
                        s0 += wv * *x0.add(i);
                        s1 += wv * *x1.add(i);
                        i += 1;
                    }
                    ys[r][o] = s0;
                    if two {
                        ys[r + 1][o] = s1;
                    }
                }
                r += 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_products_are_close_to_f32_and_exact_on_the_dequantised_matrix() {
        let (out, n) = (200, 96);
        let w: Vec<f32> = (0..out * n)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.1)
            .collect();
        let q = Q8::quantize(&w, out, n).unwrap();
        let deq = q.dequantize();
        let x0: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let x1: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let mut y0 = vec![0f32; out];
        let mut y1 = vec![0f32; out];
        gemv_q8(&q, &[&x0, &x1], &mut [&mut y0, &mut y1]);
        for o in 0..out {
            for (x, y) in [(&x0, &y0), (&x1, &y1)] {
                // Within the error of 8-bit weights and (on AVX2) 8-bit inputs: a
                // part in 127 of each block's largest value, summed over blocks.
                let full: f32 = (0..n).map(|i| w[o * n + i] * x[i]).sum();
                let deq_full: f32 = (0..n).map(|i| deq[o * n + i] * x[i]).sum();
                assert!((y[o] - full).abs() < 0.01, "row {o}: {} vs {full}", y[o]);
                assert!(
                    (y[o] - deq_full).abs() < 0.005,
                    "row {o}: {} vs {deq_full}",
                    y[o]
                );
            }
        }
        assert!(Q8::quantize(&w[..out * 95], out, 95).is_none());
    }

    #[test]
    fn q8_products_split_across_threads_agree_with_one_thread() {
        let (out, n) = (1024, 320);
        let w: Vec<f32> = (0..out * n)
            .map(|i| ((i % 251) as f32 - 125.0) / 500.0)
            .collect();
        let q = Q8::quantize(&w, out, n).unwrap();
        let x: Vec<f32> = (0..n).map(|i| ((i % 9) as f32 - 4.0) / 4.0).collect();
        let mut split = vec![0f32; out];
        gemv_q8(&q, &[&x], &mut [&mut split]);
        let mut whole = vec![0f32; out];
        gemv_q8_range(&q.q, &q.scales, n, &[&x], &mut [&mut whole]);
        assert_eq!(split, whole);
    }

    #[test]
    fn gemv_matches_a_plain_product_for_one_two_and_three_rows() {
        let (out, n) = (300, 70);
        let w: Vec<f32> = (0..out * n)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..n)
                    .map(|i| ((i + r * 13) % 11) as f32 / 11.0 - 0.5)
                    .collect()
            })
            .collect();
        for rows in 1..=3 {
            let xr: Vec<&[f32]> = xs[..rows].iter().map(|x| x.as_slice()).collect();
            let mut ys = vec![vec![0f32; out]; rows];
            let mut yr: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
            gemv(&w, n, &xr, &mut yr);
            for r in 0..rows {
                for o in 0..out {
                    let want: f32 = (0..n).map(|i| w[o * n + i] * xs[r][i]).sum();
                    assert!((ys[r][o] - want).abs() < 1e-4, "row {r} out {o}");
                }
            }
        }
    }

    #[test]
    fn gemv_splits_large_products_across_threads_correctly() {
        let (out, n) = (1000, 128);
        let w: Vec<f32> = (0..out * n).map(|i| (i % 13) as f32 - 6.0).collect();
        let x: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
        let mut y = vec![0f32; out];
        gemv(&w, n, &[&x], &mut [&mut y]);
        for o in 0..out {
            let want: f32 = (0..n).map(|i| w[o * n + i] * x[i]).sum();
            assert_eq!(y[o], want, "out {o}");
        }
    }
}
