//! CPU kernels for the decoder's step: a matrix-vector product that reads each
//! weight once for every row it serves (both guidance branches in one pass over the
//! weights, which is what bounds a decoder step), and the small vector operations
//! around it. AVX2/FMA is chosen at run time; other CPUs take a portable path the
//! compiler vectorises. The 8-bit product has two more kernels on `vpdpbusd`:
//! AVX-VNNI (256 bits: Alder Lake, Sapphire Rapids, Zen 5 and later) and AVX-512
//! VNNI (Ice Lake, Zen 4 and later). All three integer kernels give the same
//! results bit for bit. AVX-VNNI is the default where the CPU has it (8–11 %
//! more decoder steps than AVX2 on a Xeon with both VNNI kinds, where the step
//! streams its weights at close to the memory's read rate), else AVX2. AVX-512
//! VNNI is not a default: on the Zen 4 it was measured on (which runs 512-bit
//! operations as two 256-bit halves) a whole decoder step was 5 to 20 % slower
//! with it than with AVX2, and on that Xeon it was within noise of AVX-VNNI.
//! `VIDMUSICIAN_Q8_KERNEL=avx-vnni|vnni|avx2|portable` picks one (to compare
//! them on one machine), and [`q8_kernel`] says which runs.

use super::pool::Pool;

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

/// Runs `f(first_output, outputs)` on one contiguous block of outputs per thread of
/// the [`Pool`] (in multiples of 8), every row of `ys` split at the same places.
pub(crate) fn split_outputs(
    out: usize,
    ys: &mut [&mut [f32]],
    f: &(dyn Fn(usize, &mut [&mut [f32]]) + Sync),
) {
    Pool::with_current(|pool| {
        let block = out.div_ceil(pool.threads()).div_ceil(8).max(1) * 8;
        let mut parts: Vec<Vec<&mut [f32]>> =
            (0..out.div_ceil(block)).map(|_| Vec::new()).collect();
        for y in ys.iter_mut() {
            for (part, chunk) in parts.iter_mut().zip(y.chunks_mut(block)) {
                part.push(chunk);
            }
        }
        pool.run_parts(parts, &|i, part| f(i * block, part));
    });
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

/// Weights per integer product in [`Q8`] rows: the kernels' unit.
pub const Q8_BLOCK: usize = 32;

/// Rows of a [`Q8`] matrix stored together, block by block, so that one load of an
/// input block serves this many weight rows and their block sums are scaled together.
pub const Q8_GROUP: usize = 4;

/// Most blocks sharing one scale: 128 weights, so that four integer products are
/// summed before a conversion to float (8-bit weights with a scale per 128 lose
/// little against one per 32, and the step is bound by those conversions).
const Q8_MAX_SUBS: usize = 4;

/// A row-major matrix in 8 bits: every run of `subs ·` [`Q8_BLOCK`] weights of a row
/// is `scale · q` with `q` in −127..=127, a quarter of the bytes of f32 for the
/// matrix-vector products that bound a decoder step.
///
/// Rows are stored in groups of [`Q8_GROUP`] (the last padded with zero rows),
/// interleaved by block: `q[((g · blocks + b) · GROUP + j) · BLOCK ..]` is block `b`
/// of row `g · GROUP + j`, and `scales[(g · runs + s) · GROUP + j]` the scale of its
/// run `s`. A thread then reads one sequential stream of weights.
pub struct Q8 {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub out: usize,
    pub inn: usize,
    /// Blocks per scale: 4, or fewer where rows do not split into runs of 128.
    pub subs: usize,
    /// The sums of each run's levels over the first and the second 16 of
    /// each block (`[(g · runs + s) · 2·GROUP + half · GROUP + j]`): the VNNI
    /// kernel multiplies `x + 128` (unsigned) and takes `128 ·` these back
    /// off, half by half as its lanes hold them.
    pub sums: Vec<i32>,
}

impl Q8 {
    /// Quantises `w` (`out × inn`, `inn` a multiple of [`Q8_BLOCK`]) to the nearest
    /// level of each run's scale.
    pub fn quantize(w: &[f32], out: usize, inn: usize) -> Option<Self> {
        if w.len() != out * inn {
            return None;
        }
        let mut q = Self::zeroed(out, inn)?;
        q.set_rows(0, w);
        Some(q)
    }

    /// An `out × inn` matrix of zeros (`inn` a multiple of [`Q8_BLOCK`]) whose
    /// rows [`Q8::set_rows`] fills: a loader quantises each part of a stacked
    /// matrix in place as it reads it, without an f32 copy of the whole.
    pub fn zeroed(out: usize, inn: usize) -> Option<Self> {
        if !inn.is_multiple_of(Q8_BLOCK) || inn == 0 {
            return None;
        }
        let subs = subs_for(inn);
        let runs = inn / (subs * Q8_BLOCK);
        let groups = out.div_ceil(Q8_GROUP);
        Some(Self {
            q: vec![0i8; groups * Q8_GROUP * inn],
            // Padding rows keep q = 0 and this scale, which keeps them finite.
            scales: vec![1f32; groups * Q8_GROUP * runs],
            out,
            inn,
            subs,
            sums: vec![0i32; groups * 2 * Q8_GROUP * runs],
        })
    }

    /// Quantises `w`, whole rows of `inn` values, into rows `first..` (which must
    /// lie within the matrix).
    pub fn set_rows(&mut self, first: usize, w: &[f32]) {
        self.set_rows_with(first, w, quantize_run);
    }

    fn set_rows_with(&mut self, first: usize, w: &[f32], run_fn: fn(&[f32], &mut [i8]) -> f32) {
        let inn = self.inn;
        assert!(
            w.len().is_multiple_of(inn) && first + w.len() / inn <= self.out,
            "rows {first}.. of {} do not fit a {}-row matrix",
            w.len() / inn,
            self.out
        );
        let (subs, blocks) = (self.subs, inn / Q8_BLOCK);
        let run = subs * Q8_BLOCK;
        let runs = inn / run;
        let mut levels = [0i8; Q8_MAX_SUBS * Q8_BLOCK];
        for (r, values) in w.chunks_exact(inn).enumerate() {
            let row = first + r;
            let (g, j) = (row / Q8_GROUP, row % Q8_GROUP);
            for (s, seg) in values.chunks_exact(run).enumerate() {
                let levels = &mut levels[..run];
                self.scales[(g * runs + s) * Q8_GROUP + j] = run_fn(seg, levels);
                let mut halves = [0i32; 2];
                for (k, part) in levels.chunks_exact(Q8_BLOCK).enumerate() {
                    let (low, high) = part.split_at(Q8_BLOCK / 2);
                    halves[0] += low.iter().map(|&v| i32::from(v)).sum::<i32>();
                    halves[1] += high.iter().map(|&v| i32::from(v)).sum::<i32>();
                    let b = s * subs + k;
                    self.q[((g * blocks + b) * Q8_GROUP + j) * Q8_BLOCK..][..Q8_BLOCK]
                        .copy_from_slice(part);
                }
                for (half, sum) in halves.into_iter().enumerate() {
                    self.sums[(g * runs + s) * 2 * Q8_GROUP + half * Q8_GROUP + j] = sum;
                }
            }
        }
    }

    /// The f32 matrix (`out × inn`, row-major) these weights stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.inn / Q8_BLOCK;
        let runs = blocks / self.subs;
        let mut w = vec![0f32; self.out * self.inn];
        for (i, block) in self.q.chunks_exact(Q8_BLOCK).enumerate() {
            let (j, b, g) = (
                i % Q8_GROUP,
                (i / Q8_GROUP) % blocks,
                i / (Q8_GROUP * blocks),
            );
            let row = g * Q8_GROUP + j;
            if row < self.out {
                let s = self.scales[(g * runs + b / self.subs) * Q8_GROUP + j];
                let dst = &mut w[row * self.inn + b * Q8_BLOCK..][..Q8_BLOCK];
                for (d, &v) in dst.iter_mut().zip(block) {
                    *d = f32::from(v) * s;
                }
            }
        }
        w
    }
}

/// Blocks per scale for rows of `inn` weights: the most, up to [`Q8_MAX_SUBS`], that
/// divides the row.
fn subs_for(inn: usize) -> usize {
    let blocks = inn / Q8_BLOCK;
    (1..=Q8_MAX_SUBS)
        .rev()
        .find(|s| blocks.is_multiple_of(*s))
        .unwrap_or(1)
}

/// Writes `run` (a whole number of blocks) as levels in −127..=127 to `q`,
/// rounded to nearest (ties to even, as the vector conversions round), and
/// returns its scale (weights and inputs alike): on AVX2 eight at a time, which
/// is most of the time an 8-bit decoder takes to load.
fn quantize_run(run: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // Checked here, once per run: the vector code reads and writes by
            // pointer on the strength of it.
            assert!(run.len() == q.len() && run.len().is_multiple_of(Q8_BLOCK));
            // SAFETY: the CPU has the features the function is compiled for;
            // `run` and `q` are as long and hold whole blocks (asserted).
            return unsafe { x86::quantize_run_avx2(run, q) };
        }
    }
    quantize_run_portable(run, q)
}

fn quantize_run_portable(run: &[f32], q: &mut [i8]) -> f32 {
    let max = run.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    // A multiply by the reciprocal, as the vector path does (a division there
    // costs several times a multiply, in a loop over every weight).
    let inv = 1.0 / scale;
    for (l, x) in q.iter_mut().zip(run) {
        *l = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// An input row in 8 bits, a scale per run of `subs` blocks (as the weights it
/// meets), as the integer kernels read it.
pub(crate) struct QuantRow {
    q: Vec<i8>,
    /// `|q|`, the unsigned operand of the AVX2 kernel's `maddubs`.
    abs: Vec<i8>,
    /// `q + 128` as unsigned bytes (`q ^ 0x80`), the unsigned operand of
    /// the AVX-VNNI kernel's `vpdpbusd`.
    biased: Vec<u8>,
    scales: Vec<f32>,
}

impl QuantRow {
    fn new(x: &[f32], subs: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut row = Self {
                    q: vec![0; x.len()],
                    abs: vec![0; x.len()],
                    biased: vec![0; x.len()],
                    scales: vec![0.0; x.len() / (Q8_BLOCK * subs)],
                };
                // SAFETY: the CPU has the features the function is compiled for.
                unsafe { x86::quantize_row_avx2(x, subs, &mut row) };
                return row;
            }
        }
        let mut q = vec![0i8; x.len()];
        let scales = x
            .chunks_exact(Q8_BLOCK * subs)
            .zip(q.chunks_exact_mut(Q8_BLOCK * subs))
            .map(|(b, q)| quantize_run_portable(b, q))
            .collect();
        let abs = q.iter().map(|v| v.abs()).collect();
        let biased = q.iter().map(|&v| (v as u8) ^ 0x80).collect();
        Self {
            q,
            abs,
            biased,
            scales,
        }
    }
}

/// The kernels of the 8-bit product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Kernel {
    Portable,
    Avx2,
    /// 256-bit `vpdpbusd` (AVX-VNNI: Alder Lake, Zen 5 and later; also on
    /// Sapphire Rapids and on some Zen 4 machines, beside AVX-512).
    AvxVnni,
    Avx512Vnni,
}

impl Q8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::Portable => "portable",
            Q8Kernel::Avx2 => "avx2",
            Q8Kernel::AvxVnni => "avx-vnni",
            Q8Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Q8Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::AvxVnni => Q8Kernel::Avx2.available() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => {
                Q8Kernel::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernel to use where none is asked for: AVX-VNNI, else AVX2, else
    /// the portable one, the first this CPU has (see the module's docs for
    /// why not AVX-512 VNNI).
    pub fn fastest() -> Self {
        [Q8Kernel::AvxVnni, Q8Kernel::Avx2, Q8Kernel::Portable]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Q8Kernel::Portable)
    }

    /// The kernel named `name` (`avx-vnni`, `vnni` for AVX-512 VNNI, `avx2`,
    /// `portable`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "vnni" | "avx512-vnni" | "avx512vnni" | "avx512_vnni" => Some(Q8Kernel::Avx512Vnni),
            "avx-vnni" | "avxvnni" | "avx_vnni" => Some(Q8Kernel::AvxVnni),
            "avx2" => Some(Q8Kernel::Avx2),
            "portable" => Some(Q8Kernel::Portable),
            _ => None,
        }
    }
}

/// The 8-bit kernel in use: set by [`use_q8_kernel`], else the one
/// `VIDMUSICIAN_Q8_KERNEL` names when this CPU has it, else the fastest it
/// has.
pub fn q8_kernel() -> Q8Kernel {
    use std::sync::atomic::Ordering;
    match Q8_KERNEL.load(Ordering::Relaxed) {
        1 => Q8Kernel::Portable,
        2 => Q8Kernel::Avx2,
        3 => Q8Kernel::Avx512Vnni,
        4 => Q8Kernel::AvxVnni,
        _ => {
            let asked = std::env::var("VIDMUSICIAN_Q8_KERNEL")
                .ok()
                .and_then(|v| Q8Kernel::parse(&v));
            let k = match asked {
                Some(k) if k.available() => k,
                _ => Q8Kernel::fastest(),
            };
            use_q8_kernel(k);
            k
        }
    }
}

/// Makes `kernel` the 8-bit kernel of this process (a benchmark comparing
/// them); false, and nothing changed, when this CPU lacks it.
pub fn use_q8_kernel(kernel: Q8Kernel) -> bool {
    if !kernel.available() {
        return false;
    }
    let code = match kernel {
        Q8Kernel::Portable => 1,
        Q8Kernel::Avx2 => 2,
        Q8Kernel::Avx512Vnni => 3,
        Q8Kernel::AvxVnni => 4,
    };
    Q8_KERNEL.store(code, std::sync::atomic::Ordering::Relaxed);
    true
}

/// 0 until chosen; then 1 portable, 2 AVX2, 3 AVX-512 VNNI, 4 AVX-VNNI.
static Q8_KERNEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// [`gemv`] over 8-bit weights: the inputs are quantised to 8 bits per block too and
/// the products summed in integers, each block's sum scaled by both scales.
pub fn gemv_q8(w: &Q8, xs: &[&[f32]], ys: &mut [&mut [f32]]) {
    debug_assert!(xs.iter().all(|x| x.len() == w.inn));
    debug_assert!(ys.iter().all(|y| y.len() == w.out));
    let rows: Vec<QuantRow> = xs.iter().map(|x| QuantRow::new(x, w.subs)).collect();
    if w.out * w.inn < PARALLEL_MIN * 4 {
        gemv_q8_range(w, 0, &rows, ys);
        return;
    }
    split_outputs(w.out, ys, &|start, part| {
        gemv_q8_range(w, start, &rows, part)
    });
}

/// Outputs `first..first + ys[0].len()` (`first` a multiple of [`Q8_GROUP`]).
fn gemv_q8_range(w: &Q8, first: usize, xs: &[QuantRow], ys: &mut [&mut [f32]]) {
    gemv_q8_range_with(q8_kernel(), w, first, xs, ys)
}

/// [`gemv_q8_range`] with the given kernel (which this CPU must have).
fn gemv_q8_range_with(
    kernel: Q8Kernel,
    w: &Q8,
    first: usize,
    xs: &[QuantRow],
    ys: &mut [&mut [f32]],
) {
    let count = ys.first().map_or(0, |y| y.len());
    let (blocks, subs) = (w.inn / Q8_BLOCK, w.subs);
    let runs = blocks / subs;
    let (g0, g1) = (first / Q8_GROUP, (first + count).div_ceil(Q8_GROUP));
    let q = &w.q[g0 * blocks * Q8_GROUP * Q8_BLOCK..g1 * blocks * Q8_GROUP * Q8_BLOCK];
    let scales = &w.scales[g0 * runs * Q8_GROUP..g1 * runs * Q8_GROUP];
    // The kernels take input rows two at a time (each weight load serves
    // both guidance branches), the last one alone when their count is odd.
    #[cfg(target_arch = "x86_64")]
    macro_rules! in_pairs {
        ($kernel:ident, $weights:expr) => {{
            for (x, y) in xs.chunks(2).zip(ys.chunks_mut(2)) {
                // SAFETY: the CPU has the features the kernel is compiled
                // for; `q`, the scales (and sums) hold whole groups of
                // `blocks` blocks covering the outputs of `ys`.
                unsafe {
                    match x {
                        [a, b] => x86::$kernel::<2>(q, $weights, (blocks, subs), [a, b], y),
                        [a] => x86::$kernel::<1>(q, $weights, (blocks, subs), [a], y),
                        _ => {}
                    }
                }
            }
            return;
        }};
    }
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Q8Kernel::Avx512Vnni => {
            let sums = &w.sums[g0 * runs * 2 * Q8_GROUP..g1 * runs * 2 * Q8_GROUP];
            in_pairs!(gemv_q8_vnni, (scales, sums))
        }
        Q8Kernel::AvxVnni => {
            let sums = &w.sums[g0 * runs * 2 * Q8_GROUP..g1 * runs * 2 * Q8_GROUP];
            in_pairs!(gemv_q8_avx_vnni, (scales, sums))
        }
        Q8Kernel::Avx2 => in_pairs!(gemv_q8_avx2, scales),
        Q8Kernel::Portable => {}
    }
    gemv_q8_portable(q, scales, (blocks, subs), xs, ys);
}

/// [`gemv_q8_range`] without SIMD (other CPUs), the same integer sums per run.
fn gemv_q8_portable(
    q: &[i8],
    scales: &[f32],
    (blocks, subs): (usize, usize),
    xs: &[QuantRow],
    ys: &mut [&mut [f32]],
) {
    let runs = blocks / subs;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        for (o, y) in y.iter_mut().enumerate() {
            let (g, j) = (o / Q8_GROUP, o % Q8_GROUP);
            let mut acc = 0f32;
            for s in 0..runs {
                let mut d = 0i32;
                for b in s * subs..(s + 1) * subs {
                    let i = (g * blocks + b) * Q8_GROUP + j;
                    let wb = &q[i * Q8_BLOCK..(i + 1) * Q8_BLOCK];
                    let xb = &x.q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
                    d += wb
                        .iter()
                        .zip(xb)
                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                        .sum::<i32>();
                }
                acc += d as f32 * (scales[(g * runs + s) * Q8_GROUP + j] * x.scales[s]);
            }
            *y = acc;
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

/// A head's keys or values: `len × hd` values in f32 or f16.
#[derive(Clone, Copy)]
pub enum Kv<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl Kv<'_> {
    fn len(&self) -> usize {
        match self {
            Kv::F32(v) => v.len(),
            Kv::F16(v) => v.len(),
        }
    }
}

/// Attention of one head's query `q` (`hd` values) over `len` keys and values stored
/// one after another (`len × hd` each), with an optional additive bias per key:
/// softmax(q·k · scale + bias) · v into `out`. `scores` is scratch of at least `len`.
pub fn attend_head(
    q: &[f32],
    keys: Kv<'_>,
    values: Kv<'_>,
    bias: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let len = keys.len() / hd.max(1);
    assert!(values.len() == keys.len() && out.len() == hd && scores.len() >= len);
    let scores = &mut scores[..len];
    #[cfg(target_arch = "x86_64")]
    let simd = hd.is_multiple_of(8)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    let at = |kv: Kv<'_>, i: usize| match kv {
        Kv::F32(v) => v[i],
        Kv::F16(v) => v[i].to_f32(),
    };
    if simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features; keys hold `len` rows of `hd`, `hd` a
        // multiple of 8.
        unsafe {
            match keys {
                Kv::F32(k) => x86::scores_f32(q, k, scale, scores),
                Kv::F16(k) => x86::scores_f16(q, k, scale, scores),
            }
        }
    } else {
        for (j, s) in scores.iter_mut().enumerate() {
            *s = (0..hd).map(|i| q[i] * at(keys, j * hd + i)).sum::<f32>() * scale;
        }
    }
    if let Some(b) = bias {
        add_into(scores, b);
    }
    softmax(scores);
    if simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for the values.
        unsafe {
            match values {
                Kv::F32(v) => x86::weighted_sum_f32(scores, v, out),
                Kv::F16(v) => x86::weighted_sum_f16(scores, v, out),
            }
        }
    } else {
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            for (i, o) in out.iter_mut().enumerate() {
                *o += p * at(values, j * hd + i);
            }
        }
    }
}

/// `x += y`, element by element.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
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

    /// Eight f32 values from `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        // SAFETY: callers keep eight values readable at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// Eight f16 values from `p`, widened to f32 by F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load_f16(p: *const half::f16) -> __m256 {
        // SAFETY: callers keep eight values readable at `p`.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// The attention kernels for one element type of the KV cache.
    macro_rules! attention_kernels {
        ($elem:ty, $load:ident, $scores:ident, $weighted:ident) => {
            /// `scores[j] = q · keys[j · hd..][..hd] · scale` (`hd = q.len()`, a
            /// multiple of 8): eight keys at a time, each in its own accumulator,
            /// the eight sums gathered by one `hadd` tree.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $scores(q: &[f32], keys: &[$elem], scale: f32, scores: &mut [f32]) {
                // SAFETY: callers guarantee the CPU features and `scores.len()`
                // rows of `hd` in `keys`.
                unsafe {
                    let hd = q.len();
                    let (qp, kp) = (q.as_ptr(), keys.as_ptr());
                    let len = scores.len();
                    let s = _mm256_set1_ps(scale);
                    let mut j = 0;
                    while j + 8 <= len {
                        let mut acc = [_mm256_setzero_ps(); 8];
                        for i in (0..hd).step_by(8) {
                            let qv = _mm256_loadu_ps(qp.add(i));
                            for (r, a) in acc.iter_mut().enumerate() {
                                *a = _mm256_fmadd_ps(qv, $load(kp.add((j + r) * hd + i)), *a);
                            }
                        }
                        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
                        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
                        let t2 = _mm256_hadd_ps(acc[4], acc[5]);
                        let t3 = _mm256_hadd_ps(acc[6], acc[7]);
                        let u0 = _mm256_hadd_ps(t0, t1);
                        let u1 = _mm256_hadd_ps(t2, t3);
                        // u0: keys 0–3 (low and high halves of their sums), u1: 4–7.
                        let sum = _mm256_add_ps(
                            _mm256_permute2f128_ps(u0, u1, 0x20),
                            _mm256_permute2f128_ps(u0, u1, 0x31),
                        );
                        _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(sum, s));
                        j += 8;
                    }
                    while j < len {
                        let mut acc = _mm256_setzero_ps();
                        for i in (0..hd).step_by(8) {
                            acc = _mm256_fmadd_ps(
                                _mm256_loadu_ps(qp.add(i)),
                                $load(kp.add(j * hd + i)),
                                acc,
                            );
                        }
                        scores[j] = hsum(acc) * scale;
                        j += 1;
                    }
                }
            }

            /// `out = Σ_j p[j] · values[j · hd..][..hd]` (`hd = out.len()`, a
            /// multiple of 8), the output held in registers eight lanes at a time.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $weighted(p: &[f32], values: &[$elem], out: &mut [f32]) {
                // SAFETY: callers guarantee the CPU features and `p.len()` rows of
                // `hd` in `values`.
                unsafe {
                    let hd = out.len();
                    let vp = values.as_ptr();
                    let mut o = 0;
                    while o < hd {
                        // Up to 64 outputs per pass: eight accumulators.
                        let lanes = ((hd - o) / 8).min(8);
                        let mut acc = [_mm256_setzero_ps(); 8];
                        for (j, &pj) in p.iter().enumerate() {
                            let w = _mm256_set1_ps(pj);
                            for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                                *a = _mm256_fmadd_ps(w, $load(vp.add(j * hd + o + l * 8)), *a);
                            }
                        }
                        for (l, a) in acc.iter().enumerate().take(lanes) {
                            _mm256_storeu_ps(out.as_mut_ptr().add(o + l * 8), *a);
                        }
                        o += lanes * 8;
                    }
                }
            }
        };
    }

    attention_kernels!(f32, load_f32, scores_f32, weighted_sum_f32);
    attention_kernels!(half::f16, load_f16, scores_f16, weighted_sum_f16);

    /// [`super::quantize_run`] on AVX2: the largest magnitude eight at a time, then
    /// the levels 32 at a time, packed with saturation (which is the clamp).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `run` and `q` are as long, a multiple of
    /// [`super::Q8_BLOCK`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_run_avx2(run: &[f32], q: &mut [i8]) -> f32 {
        use super::Q8_BLOCK as B;
        debug_assert!(run.len() == q.len() && run.len().is_multiple_of(B));
        // SAFETY: callers guarantee the CPU features; every load and store is
        // within `run` and `q`, which hold `run.len()` values.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let p = run.as_ptr();
            let mut m = _mm256_setzero_ps();
            for i in 0..run.len() / 8 {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i * 8))));
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            let inv = _mm256_set1_ps(1.0 / scale);
            for k in 0..run.len() / B {
                let b = p.add(k * B);
                let i = [0, 8, 16, 24]
                    .map(|o| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(b.add(o)), inv)));
                // The packs interleave 128-bit lanes; the permute restores order.
                let packed = _mm256_packs_epi16(
                    _mm256_packs_epi32(i[0], i[1]),
                    _mm256_packs_epi32(i[2], i[3]),
                );
                let levels = _mm256_permutevar8x32_epi32(packed, order);
                _mm256_storeu_si256(q.as_mut_ptr().add(k * B) as *mut __m256i, levels);
            }
            scale
        }
    }

    /// [`super::QuantRow::new`] on AVX2: each run's levels, and beside them
    /// their magnitudes and their values biased by 128.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `row` holds `x.len()` values and a scale
    /// per run, and `x` whole runs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row_avx2(x: &[f32], subs: usize, row: &mut super::QuantRow) {
        use super::Q8_BLOCK as B;
        let run = subs * B;
        for (s, scale) in row.scales.iter_mut().enumerate() {
            let at = s * run;
            // SAFETY: as this function's.
            *scale = unsafe { quantize_run_avx2(&x[at..at + run], &mut row.q[at..at + run]) };
        }
        // SAFETY: the CPU features, as above; the three rows are as long, a whole
        // number of blocks.
        unsafe {
            let flip = _mm256_set1_epi8(-128);
            for at in (0..row.q.len()).step_by(B) {
                let q = _mm256_loadu_si256(row.q.as_ptr().add(at) as *const __m256i);
                _mm256_storeu_si256(
                    row.abs.as_mut_ptr().add(at) as *mut __m256i,
                    _mm256_abs_epi8(q),
                );
                _mm256_storeu_si256(
                    row.biased.as_mut_ptr().add(at) as *mut __m256i,
                    _mm256_xor_si256(q, flip),
                );
            }
        }
    }

    /// [`super::gemv_q8`] in integers for `R` input rows: each group of
    /// [`super::Q8_GROUP`] weight rows is read block by block; every 32 weights meet
    /// each input block in `maddubs` (|x| · sign-adjusted w, pairs summed to 16 bits,
    /// then to 32 by `madd`), summed in integers over a run of `subs` blocks; two
    /// rounds of `hadd` then gather the four rows' run sums into one vector, scaled by
    /// the four weight scales times the input's scale in one multiply-add. Every input
    /// load serves four weight rows, every weight load `R` inputs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_q8_avx2<const R: usize>(
        q: &[i8],
        scales: &[f32],
        (blocks, subs): (usize, usize),
        xs: [&super::QuantRow; R],
        ys: &mut [&mut [f32]],
    ) {
        use super::{Q8_BLOCK as B, Q8_GROUP as G};
        // SAFETY: callers guarantee the CPU features; `q` and `scales` hold whole
        // groups of `blocks` blocks (`blocks / subs` scales per row), the input rows
        // `blocks` blocks, and outputs are written only below each row's length.
        unsafe {
            let groups = q.len() / (blocks * G * B);
            let runs = blocks / subs;
            let out = ys[0].len();
            let ones = _mm256_set1_epi16(1);
            for g in 0..groups {
                let wg = q.as_ptr().add(g * blocks * G * B);
                let sg = scales.as_ptr().add(g * runs * G);
                let mut acc = [_mm256_setzero_ps(); R];
                for s in 0..runs {
                    let mut sums = [[_mm256_setzero_si256(); G]; R];
                    for b in s * subs..(s + 1) * subs {
                        let wp = wg.add(b * G * B);
                        // Prefetch addresses may pass the end: the hint never faults.
                        _mm_prefetch(wp.wrapping_add(AHEAD), _MM_HINT_T0);
                        _mm_prefetch(wp.wrapping_add(AHEAD + 64), _MM_HINT_T0);
                        let w = [0, 1, 2, 3]
                            .map(|j| _mm256_loadu_si256(wp.add(j * B) as *const __m256i));
                        for r in 0..R {
                            let x = xs[r];
                            let xq = _mm256_loadu_si256(x.q.as_ptr().add(b * B) as *const __m256i);
                            let xa =
                                _mm256_loadu_si256(x.abs.as_ptr().add(b * B) as *const __m256i);
                            for j in 0..G {
                                let d = _mm256_madd_epi16(
                                    _mm256_maddubs_epi16(xa, _mm256_sign_epi8(w[j], xq)),
                                    ones,
                                );
                                sums[r][j] = _mm256_add_epi32(sums[r][j], d);
                            }
                        }
                    }
                    let ws = _mm256_broadcast_ps(&*(sg.add(s * G) as *const __m128));
                    for r in 0..R {
                        let x_scale = *xs[r].scales.as_ptr().add(s);
                        acc[r] = add_run(sums[r], _mm256_setzero_si256(), ws, x_scale, acc[r]);
                    }
                }
                store_group(acc, g * G, out, ys);
            }
        }
    }

    /// Adds a run's integer sums of four weight rows (8 lanes each) to
    /// `acc`, less `off`, scaled by the rows' scales `ws` (twice over) and
    /// the input's: lanes j and j + 4 of the result gather the two halves of
    /// row j's sum.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn add_run(rows: [__m256i; 4], off: __m256i, ws: __m256, x_scale: f32, acc: __m256) -> __m256 {
        let four = _mm256_hadd_epi32(
            _mm256_hadd_epi32(rows[0], rows[1]),
            _mm256_hadd_epi32(rows[2], rows[3]),
        );
        let four = _mm256_sub_epi32(four, off);
        let scale = _mm256_mul_ps(ws, _mm256_set1_ps(x_scale));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(four), scale, acc)
    }

    /// Writes a group's four outputs (those below `out`) from `start`, for
    /// each input row: the two halves [`add_run`] left in lanes j and j + 4.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store_group<const R: usize>(
        acc: [__m256; R],
        start: usize,
        out: usize,
        ys: &mut [&mut [f32]],
    ) {
        use super::Q8_GROUP as G;
        for r in 0..R {
            let v = _mm_add_ps(
                _mm256_castps256_ps128(acc[r]),
                _mm256_extractf128_ps(acc[r], 1),
            );
            let mut four = [0f32; G];
            // SAFETY: `four` holds the four lanes stored.
            unsafe { _mm_storeu_ps(four.as_mut_ptr(), v) };
            let n = G.min(out - start);
            ys[r][start..start + n].copy_from_slice(&four[..n]);
        }
    }

    /// [`gemv_q8_avx2`] with AVX-VNNI: `vpdpbusd` on 256 bits multiplies the
    /// input plus 128 (unsigned, made once per input row) by each weight row's
    /// block, four products summed into each 32-bit lane, so every lane holds
    /// the sum the AVX2 kernel's `maddubs` and `madd` leave there, plus 128 ·
    /// the weights it met; that is taken back off once per run from the
    /// weights' sums. Per block and input row: one input load and four
    /// `vpdpbusd`, where the AVX2 kernel takes two loads and sixteen
    /// operations. The integers are the AVX2 kernel's, so the results are
    /// its bit for bit.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub unsafe fn gemv_q8_avx_vnni<const R: usize>(
        q: &[i8],
        (scales, wsums): (&[f32], &[i32]),
        (blocks, subs): (usize, usize),
        xs: [&super::QuantRow; R],
        ys: &mut [&mut [f32]],
    ) {
        use super::{Q8_BLOCK as B, Q8_GROUP as G};
        // SAFETY: callers guarantee the CPU features; `q`, `scales` and `wsums`
        // hold whole groups of `blocks` blocks (`blocks / subs` runs per row),
        // the input rows `blocks` blocks, and outputs are written only below
        // each row's length.
        unsafe {
            let groups = q.len() / (blocks * G * B);
            let runs = blocks / subs;
            let out = ys[0].len();
            let bias = _mm256_set1_epi32(128);
            for g in 0..groups {
                let wg = q.as_ptr().add(g * blocks * G * B);
                let sg = scales.as_ptr().add(g * runs * G);
                let tg = wsums.as_ptr().add(g * runs * 2 * G);
                let mut acc = [_mm256_setzero_ps(); R];
                for s in 0..runs {
                    let mut sums = [[_mm256_setzero_si256(); G]; R];
                    for b in s * subs..(s + 1) * subs {
                        let wp = wg.add(b * G * B);
                        _mm_prefetch(wp.wrapping_add(AHEAD), _MM_HINT_T0);
                        _mm_prefetch(wp.wrapping_add(AHEAD + 64), _MM_HINT_T0);
                        let w = [0, 1, 2, 3]
                            .map(|j| _mm256_loadu_si256(wp.add(j * B) as *const __m256i));
                        for r in 0..R {
                            let x = _mm256_loadu_si256(
                                xs[r].biased.as_ptr().add(b * B) as *const __m256i
                            );
                            for j in 0..G {
                                sums[r][j] = _mm256_dpbusd_avx_epi32(sums[r][j], x, w[j]);
                            }
                        }
                    }
                    let ws = _mm256_broadcast_ps(&*(sg.add(s * G) as *const __m128));
                    let off = _mm256_mullo_epi32(
                        _mm256_loadu_si256(tg.add(s * 2 * G) as *const __m256i),
                        bias,
                    );
                    for r in 0..R {
                        let x_scale = *xs[r].scales.as_ptr().add(s);
                        acc[r] = add_run(sums[r], off, ws, x_scale, acc[r]);
                    }
                }
                store_group(acc, g * G, out, ys);
            }
        }
    }

    /// [`gemv_q8_avx2`] with AVX-512 VNNI: each 64-byte load holds one block of
    /// two rows of the group, and `vpdpbusd` multiplies the input plus 128
    /// (unsigned: the block broadcast to both halves, its sign bit flipped) by
    /// the weights, four products summed into each 32-bit lane; `128 ·` the
    /// weights' sums is taken back off once per run. Per block: two weight
    /// loads and, per input row, one broadcast load, one `xor` and two
    /// `vpdpbusd`, where the AVX2 kernel takes four loads and sixteen
    /// operations. Every lane ends with the AVX2 kernel's integer, so the
    /// results are its bit for bit.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn gemv_q8_vnni<const R: usize>(
        q: &[i8],
        (scales, wsums): (&[f32], &[i32]),
        (blocks, subs): (usize, usize),
        xs: [&super::QuantRow; R],
        ys: &mut [&mut [f32]],
    ) {
        use super::{Q8_BLOCK as B, Q8_GROUP as G};
        // SAFETY: callers guarantee the CPU features; `q`, `scales` and `wsums`
        // hold whole groups of `blocks` blocks (`blocks / subs` runs per row),
        // the input rows `blocks` doubled blocks, and outputs are written only
        // below each row's length.
        unsafe {
            let groups = q.len() / (blocks * G * B);
            let runs = blocks / subs;
            let out = ys[0].len();
            let zero = _mm512_setzero_si512();
            let bias = _mm256_set1_epi32(128);
            // `q ^ 0x80` is `q + 128` as an unsigned byte.
            let flip = _mm512_set1_epi8(-128);
            for g in 0..groups {
                let wg = q.as_ptr().add(g * blocks * G * B);
                let sg = scales.as_ptr().add(g * runs * G);
                let tg = wsums.as_ptr().add(g * runs * 2 * G);
                let mut acc = [_mm256_setzero_ps(); R];
                for s in 0..runs {
                    // Rows 0–1 and 2–3: lanes 0–7 one row's partial sums,
                    // 8–15 the other's.
                    let mut sums = [[zero; 2]; R];
                    for b in s * subs..(s + 1) * subs {
                        let wp = wg.add(b * G * B);
                        _mm_prefetch(wp.wrapping_add(AHEAD), _MM_HINT_T0);
                        _mm_prefetch(wp.wrapping_add(AHEAD + 64), _MM_HINT_T0);
                        let w01 = _mm512_loadu_si512(wp as *const _);
                        let w23 = _mm512_loadu_si512(wp.add(2 * B) as *const _);
                        for r in 0..R {
                            let xq =
                                _mm256_loadu_si256(xs[r].q.as_ptr().add(b * B) as *const __m256i);
                            let x = _mm512_xor_si512(_mm512_broadcast_i64x4(xq), flip);
                            sums[r][0] = _mm512_dpbusd_epi32(sums[r][0], x, w01);
                            sums[r][1] = _mm512_dpbusd_epi32(sums[r][1], x, w23);
                        }
                    }
                    let ws = _mm256_broadcast_ps(&*(sg.add(s * G) as *const __m128));
                    // 128 · each row's run sum over the halves the gathered
                    // lanes hold: lane j the first 16 of each block, j + 4
                    // the second, as in the AVX2 kernel.
                    let off = _mm256_mullo_epi32(
                        _mm256_loadu_si256(tg.add(s * 2 * G) as *const __m256i),
                        bias,
                    );
                    for r in 0..R {
                        let [a, c] = sums[r];
                        let rows = [
                            _mm512_castsi512_si256(a),
                            _mm512_extracti64x4_epi64(a, 1),
                            _mm512_castsi512_si256(c),
                            _mm512_extracti64x4_epi64(c, 1),
                        ];
                        let x_scale = *xs[r].scales.as_ptr().add(s);
                        acc[r] = add_run(rows, off, ws, x_scale, acc[r]);
                    }
                }
                store_group(acc, g * G, out, ys);
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
        // Not a whole number of row groups: the last group is padded.
        let (out, n) = (203, 96);
        let w: Vec<f32> = (0..out * n)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.1)
            .collect();
        let q = Q8::quantize(&w, out, n).unwrap();
        let deq = q.dequantize();
        let x0: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let x1: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let x2: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y0 = vec![0f32; out];
        let mut y1 = vec![0f32; out];
        let mut y2 = vec![0f32; out];
        gemv_q8(&q, &[&x0, &x1, &x2], &mut [&mut y0, &mut y1, &mut y2]);
        for o in 0..out {
            for (x, y) in [(&x0, &y0), (&x1, &y1), (&x2, &y2)] {
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
    fn weights_quantised_in_parts_equal_the_portable_quantisation_of_the_whole() {
        // Runs of 4, 3 and 1 blocks; values at ±max, ties (x/scale = k + ½), zeros.
        for (out, n) in [(11, 256), (6, 96), (5, 32)] {
            let mut w: Vec<f32> = (0..out * n)
                .map(|i| ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 0.3)
                .collect();
            w[3] = 127.0;
            w[4] = 2.5;
            w[5] = -1.5;
            w[n..2 * n].fill(0.0);
            let whole = Q8::quantize(&w, out, n).unwrap();
            let mut parts = Q8::zeroed(out, n).unwrap();
            let split = 2 * n;
            parts.set_rows(0, &w[..split]);
            parts.set_rows(2, &w[split..]);
            let mut portable = Q8::zeroed(out, n).unwrap();
            portable.set_rows_with(0, &w, quantize_run_portable);
            for q in [&parts, &portable] {
                assert_eq!(q.q, whole.q);
                assert_eq!(q.scales, whole.scales);
                assert_eq!(q.sums, whole.sums);
            }
            // Exact levels where the scale is exact: 127 → 127, 2.5 → 2 and
            // −1.5 → −2 (ties to even), zero rows stay zero with scale 1.
            let deq = whole.dequantize();
            assert_eq!(&deq[3..6], &[127.0, 2.0, -2.0]);
            assert!(deq[n..2 * n].iter().all(|&v| v == 0.0));
        }
        assert!(Q8::zeroed(4, 0).is_none() && Q8::zeroed(4, 40).is_none());
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
        gemv_q8_range(&q, 0, &[QuantRow::new(&x, q.subs)], &mut [&mut whole]);
        assert_eq!(split, whole);
    }

    #[test]
    fn the_portable_q8_path_agrees_with_the_dispatched_one() {
        let (out, n) = (37, 384);
        let w: Vec<f32> = (0..out * n).map(|i| (i as f32 * 0.013).sin()).collect();
        let q = Q8::quantize(&w, out, n).unwrap();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.07).cos()).collect();
        let rows = [QuantRow::new(&x, q.subs)];
        let mut fast = vec![0f32; out];
        gemv_q8_range(&q, 0, &rows, &mut [&mut fast]);
        let mut plain = vec![0f32; out];
        gemv_q8_portable(
            &q.q,
            &q.scales,
            (n / Q8_BLOCK, q.subs),
            &rows,
            &mut [&mut plain],
        );
        for (a, b) in fast.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn the_vnni_kernels_give_the_avx2_kernels_results_bit_for_bit() {
        let vnni: Vec<Q8Kernel> = [Q8Kernel::AvxVnni, Q8Kernel::Avx512Vnni]
            .into_iter()
            .filter(|k| {
                let there = k.available();
                if !there {
                    eprintln!("skipped: this CPU has no {}", k.name());
                }
                there
            })
            .collect();
        if vnni.is_empty() {
            return;
        }
        // Odd sizes: a padded last group, runs of 1, 2 and 4 blocks, one to
        // three input rows (the kernels take them two at a time), inputs at
        // both ends of the 8-bit range.
        for (out, n) in [(37, 96), (203, 64), (64, 384), (5, 32)] {
            let w: Vec<f32> = (0..out * n).map(|i| (i as f32 * 0.011).sin()).collect();
            let q = Q8::quantize(&w, out, n).unwrap();
            let xs: Vec<Vec<f32>> = (0..3)
                .map(|r| {
                    (0..n)
                        .map(|i| match (r, i % 5) {
                            (2, 0) => 1.0,
                            (2, 1) => -1.0,
                            _ => ((i * (r + 3)) as f32 * 0.07).cos(),
                        })
                        .collect()
                })
                .collect();
            let rows: Vec<QuantRow> = xs.iter().map(|x| QuantRow::new(x, q.subs)).collect();
            let run = |k: Q8Kernel| {
                let mut ys = vec![vec![0f32; out]; 3];
                let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
                gemv_q8_range_with(k, &q, 0, &rows, &mut refs);
                ys
            };
            let (avx2, portable) = (run(Q8Kernel::Avx2), run(Q8Kernel::Portable));
            for &k in &vnni {
                let got = run(k);
                assert_eq!(got, avx2, "{}: {out}×{n}", k.name());
                for (a, b) in got.iter().flatten().zip(portable.iter().flatten()) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{}: {out}×{n}: {a} vs {b}",
                        k.name()
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_are_named_and_the_one_in_use_is_one_this_cpu_has() {
        assert_eq!(Q8Kernel::parse("VNNI"), Some(Q8Kernel::Avx512Vnni));
        assert_eq!(Q8Kernel::parse("avx-vnni"), Some(Q8Kernel::AvxVnni));
        assert_eq!(Q8Kernel::parse("AVX_VNNI"), Some(Q8Kernel::AvxVnni));
        assert_eq!(Q8Kernel::parse("avx2"), Some(Q8Kernel::Avx2));
        assert_eq!(Q8Kernel::parse("portable"), Some(Q8Kernel::Portable));
        assert_eq!(Q8Kernel::parse("neon"), None);
        assert!(Q8Kernel::fastest().available());
        // Switching the kernel here would race the other tests' products;
        // what runs is one this CPU has.
        assert!(q8_kernel().available());
    }

    #[test]
    fn dequantising_restores_the_row_major_matrix() {
        let (out, n) = (7, 64);
        let w: Vec<f32> = (0..out * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let deq = Q8::quantize(&w, out, n).unwrap().dequantize();
        assert_eq!(deq.len(), w.len());
        for (a, b) in w.iter().zip(&deq) {
            assert!((a - b).abs() <= 1.0 / 254.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn attention_of_one_head_matches_a_plain_softmax() {
        for hd in [8, 12, 64] {
            let len = 37;
            let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).sin()).collect();
            let k: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.17).cos()).collect();
            let v: Vec<f32> = (0..len * hd).map(|i| (i as f32 * 0.05).sin()).collect();
            let bias: Vec<f32> = (0..len)
                .map(|j| if j % 5 == 0 { f32::MIN } else { 0.0 })
                .collect();
            let mut scores = vec![0f32; len];
            let mut out = vec![0f32; hd];
            attend_head(
                &q,
                Kv::F32(&k),
                Kv::F32(&v),
                Some(&bias),
                0.5,
                &mut scores,
                &mut out,
            );
            // The same in f16, within f16's precision.
            let half = |x: &[f32]| {
                x.iter()
                    .map(|&v| half::f16::from_f32(v))
                    .collect::<Vec<_>>()
            };
            let (k16, v16) = (half(&k), half(&v));
            let mut out16 = vec![0f32; hd];
            attend_head(
                &q,
                Kv::F16(&k16),
                Kv::F16(&v16),
                Some(&bias),
                0.5,
                &mut scores,
                &mut out16,
            );
            for (a, b) in out.iter().zip(&out16) {
                assert!((a - b).abs() < 2e-3, "hd {hd}: f16 {b} vs f32 {a}");
            }
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    let d: f64 = (0..hd).map(|i| f64::from(q[i] * k[j * hd + i])).sum();
                    d * 0.5 + f64::from(bias[j])
                })
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..hd {
                let want: f64 = (0..len)
                    .map(|j| e[j] / sum * f64::from(v[j * hd + i]))
                    .sum();
                assert!((f64::from(out[i]) - want).abs() < 1e-5, "hd {hd} lane {i}");
            }
        }
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
