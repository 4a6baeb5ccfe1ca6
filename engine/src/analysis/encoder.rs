//! The visual encoder interface of the method — one global vector per 1 fps
//! frame, a set of patch vectors per 25 fps frame — and the built-in
//! weight-free encoder that stands in for CLIP when no weights are present.

use crate::video::{Fit, Frame};

pub trait VisualEncoder: Send {
    fn name(&self) -> &'static str;
    /// Side of the square RGB input.
    fn input_size(&self) -> u32;
    fn fit(&self) -> Fit;
    fn global_dim(&self) -> usize;
    /// Number of patches and width of each patch vector.
    fn local_shape(&self) -> (usize, usize);
    /// Writes the global (semantic) vector of `frame` into `out`.
    fn encode_global(&mut self, frame: &Frame, out: &mut Vec<f32>);
    /// Writes the patch vectors of `frame`, flattened patch-major, into `out`.
    fn encode_local(&mut self, frame: &Frame, out: &mut Vec<f32>);
}

/// Per-patch colour and gradient statistics on a square grid.
///
/// Patch vector (all roughly in [-1, 1], centred so that cosine distances
/// between frames are discriminative): mean R, G, B; luma deviation;
/// horizontal and vertical gradient; saturation.
///
/// Global vector: see [`global`] for the named entries, then the mean of the
/// patch vectors.
#[derive(Debug, Clone)]
pub struct StatsEncoder {
    grid: usize,
    size: u32,
    luma: Vec<f32>,
}

pub const PATCH_DIM: usize = 7;

/// Indices of the named global statistics.
pub mod global {
    pub const BRIGHTNESS: usize = 0;
    pub const CONTRAST: usize = 1;
    pub const SATURATION: usize = 2;
    pub const COLOURFULNESS: usize = 3;
    /// Red minus blue, in [-1, 1].
    pub const WARMTH: usize = 4;
    /// Mean chroma direction (cos, sin of the hue angle, weighted by chroma).
    pub const HUE_COS: usize = 5;
    pub const HUE_SIN: usize = 6;
    pub const EDGES: usize = 7;
    pub const NAMED: usize = 8;
}

/// A pixel's values that depend on its bytes alone, computed once: the
/// per-pixel divisions were most of the encoder's time. Each entry is what
/// the arithmetic gives on the spot, so the features are the same to the bit.
struct Tables {
    /// `v / 255`.
    unit: [f32; 256],
    /// The saturation `(max − min) / max` of normalised channels, by the
    /// largest and smallest byte (`max << 8 | min`); 0 for black.
    saturation: Vec<f32>,
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let unit: [f32; 256] = std::array::from_fn(|v| f32::from(v as u8) / 255.0);
        let saturation = (0..1usize << 16)
            .map(|i| {
                let (mx, mn) = (unit[i >> 8], unit[i & 0xff]);
                if mx > 0.0 { (mx - mn) / mx } else { 0.0 }
            })
            .collect();
        Tables { unit, saturation }
    })
}

impl Default for StatsEncoder {
    fn default() -> Self {
        Self::new(7, crate::video::MODEL_SIDE)
    }
}

impl StatsEncoder {
    pub fn new(grid: usize, size: u32) -> Self {
        Self {
            grid,
            size,
            luma: vec![0.0; (size * size) as usize],
        }
    }

    fn fill_luma(&mut self, frame: &Frame) {
        self.luma.resize((frame.size * frame.size) as usize, 0.0);
        for (l, px) in self.luma.iter_mut().zip(frame.rgb.chunks_exact(3)) {
            *l = (0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]))
                / 255.0;
        }
    }
}

impl VisualEncoder for StatsEncoder {
    fn name(&self) -> &'static str {
        "stats"
    }
    fn input_size(&self) -> u32 {
        self.size
    }
    fn fit(&self) -> Fit {
        Fit::Squash
    }
    fn global_dim(&self) -> usize {
        global::NAMED + PATCH_DIM
    }
    fn local_shape(&self) -> (usize, usize) {
        (self.grid * self.grid, PATCH_DIM)
    }

    fn encode_local(&mut self, frame: &Frame, out: &mut Vec<f32>) {
        self.fill_luma(frame);
        let s = frame.size as usize;
        let g = self.grid;
        let t = tables();
        out.clear();
        out.resize(g * g * PATCH_DIM, 0.0);
        for gy in 0..g {
            let (y0, y1) = (gy * s / g, (gy + 1) * s / g);
            for gx in 0..g {
                let (x0, x1) = (gx * s / g, (gx + 1) * s / g);
                let mut acc = [0.0f32; 8];
                for y in y0..y1 {
                    let at = y * s;
                    let rgb = &frame.rgb[(at + x0) * 3..(at + x1) * 3];
                    let luma = &self.luma[at + x0..at + x1];
                    // The right neighbours, one short at the frame's right edge
                    // (no gradient there), and the row below, none on the last.
                    let right = &self.luma[at + x0 + 1..(at + x1 + 1).min(at + s)];
                    let below = (y + 1 < s).then(|| &self.luma[at + s + x0..at + s + x1]);
                    for (k, (px, &l)) in rgb.chunks_exact(3).zip(luma).enumerate() {
                        let (r, gr, b) = (px[0], px[1], px[2]);
                        let dx = right.get(k).map_or(0.0, |&n| n - l);
                        let dy = below.map_or(0.0, |row| row[k] - l);
                        let (mx, mn) = (r.max(gr).max(b), r.min(gr).min(b));
                        acc[0] += t.unit[usize::from(r)];
                        acc[1] += t.unit[usize::from(gr)];
                        acc[2] += t.unit[usize::from(b)];
                        acc[3] += l;
                        acc[4] += l * l;
                        acc[5] += dx.abs();
                        acc[6] += dy.abs();
                        acc[7] += t.saturation[usize::from(mx) << 8 | usize::from(mn)];
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)).max(1) as f32;
                let mean_l = acc[3] / n;
                let var = (acc[4] / n - mean_l * mean_l).max(0.0);
                let o = &mut out[(gy * g + gx) * PATCH_DIM..][..PATCH_DIM];
                o[0] = acc[0] / n * 2.0 - 1.0;
                o[1] = acc[1] / n * 2.0 - 1.0;
                o[2] = acc[2] / n * 2.0 - 1.0;
                o[3] = (var.sqrt() * 4.0).min(1.0) * 2.0 - 1.0;
                o[4] = (acc[5] / n * 8.0).min(1.0) * 2.0 - 1.0;
                o[5] = (acc[6] / n * 8.0).min(1.0) * 2.0 - 1.0;
                o[6] = acc[7] / n * 2.0 - 1.0;
            }
        }
    }

    fn encode_global(&mut self, frame: &Frame, out: &mut Vec<f32>) {
        let mut local = Vec::new();
        self.encode_local(frame, &mut local);
        let n = (frame.size * frame.size) as f32;
        let (mut sl, mut sl2, mut ssat, mut swarm, mut hc, mut hs, mut edges) =
            (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
        let (mut rg_s, mut rg_s2, mut yb_s, mut yb_s2) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        let s = frame.size as usize;
        for (i, px) in frame.rgb.chunks_exact(3).enumerate() {
            let (r, g, b) = (
                f32::from(px[0]) / 255.0,
                f32::from(px[1]) / 255.0,
                f32::from(px[2]) / 255.0,
            );
            let l = self.luma[i];
            sl += l;
            sl2 += l * l;
            let mx = r.max(g).max(b);
            let mn = r.min(g).min(b);
            ssat += if mx > 0.0 { (mx - mn) / mx } else { 0.0 };
            swarm += r - b;
            // Opponent colour axes (Hasler & Süsstrunk colourfulness).
            let rg = r - g;
            let yb = 0.5 * (r + g) - b;
            rg_s += rg;
            rg_s2 += rg * rg;
            yb_s += yb;
            yb_s2 += yb * yb;
            // Chroma vector in the (U, V)-like plane.
            let u = b - l;
            let v = r - l;
            hc += u;
            hs += v;
            let (x, y) = (i % s, i / s);
            if x + 1 < s && y + 1 < s {
                let gx = self.luma[i + 1] - l;
                let gy = self.luma[i + s] - l;
                if gx.abs() + gy.abs() > 0.08 {
                    edges += 1.0;
                }
            }
        }
        let mean_l = sl / n;
        let contrast = (sl2 / n - mean_l * mean_l).max(0.0).sqrt();
        let (mrg, myb) = (rg_s / n, yb_s / n);
        let srg = (rg_s2 / n - mrg * mrg).max(0.0).sqrt();
        let syb = (yb_s2 / n - myb * myb).max(0.0).sqrt();
        let colourfulness = (srg * srg + syb * syb).sqrt() + 0.3 * (mrg * mrg + myb * myb).sqrt();
        let (hu, hv) = (hc / n, hs / n);
        out.clear();
        out.resize(self.global_dim(), 0.0);
        out[global::BRIGHTNESS] = mean_l;
        out[global::CONTRAST] = contrast;
        out[global::SATURATION] = ssat / n;
        out[global::COLOURFULNESS] = colourfulness;
        out[global::WARMTH] = swarm / n;
        out[global::HUE_COS] = hu;
        out[global::HUE_SIN] = hv;
        out[global::EDGES] = edges / n;
        for p in local.chunks_exact(PATCH_DIM) {
            for (o, v) in out[global::NAMED..].iter_mut().zip(p) {
                *o += v / (self.grid * self.grid) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The patch statistics as defined: each pixel's values computed on the
    /// spot, in the order the encoder sums them.
    fn patches_as_defined(frame: &Frame, grid: usize) -> Vec<f32> {
        let s = frame.size as usize;
        let luma: Vec<f32> = frame
            .rgb
            .chunks_exact(3)
            .map(|px| {
                (0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]))
                    / 255.0
            })
            .collect();
        let mut out = vec![0.0; grid * grid * PATCH_DIM];
        for gy in 0..grid {
            let (y0, y1) = (gy * s / grid, (gy + 1) * s / grid);
            for gx in 0..grid {
                let (x0, x1) = (gx * s / grid, (gx + 1) * s / grid);
                let mut acc = [0.0f32; 8];
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = y * s + x;
                        let px = &frame.rgb[i * 3..i * 3 + 3];
                        let (r, g, b) = (
                            f32::from(px[0]) / 255.0,
                            f32::from(px[1]) / 255.0,
                            f32::from(px[2]) / 255.0,
                        );
                        let l = luma[i];
                        let dx = if x + 1 < s { luma[i + 1] - l } else { 0.0 };
                        let dy = if y + 1 < s { luma[i + s] - l } else { 0.0 };
                        let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
                        acc[0] += r;
                        acc[1] += g;
                        acc[2] += b;
                        acc[3] += l;
                        acc[4] += l * l;
                        acc[5] += dx.abs();
                        acc[6] += dy.abs();
                        acc[7] += if mx > 0.0 { (mx - mn) / mx } else { 0.0 };
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)).max(1) as f32;
                let mean_l = acc[3] / n;
                let var = (acc[4] / n - mean_l * mean_l).max(0.0);
                let o = &mut out[(gy * grid + gx) * PATCH_DIM..][..PATCH_DIM];
                o[0] = acc[0] / n * 2.0 - 1.0;
                o[1] = acc[1] / n * 2.0 - 1.0;
                o[2] = acc[2] / n * 2.0 - 1.0;
                o[3] = (var.sqrt() * 4.0).min(1.0) * 2.0 - 1.0;
                o[4] = (acc[5] / n * 8.0).min(1.0) * 2.0 - 1.0;
                o[5] = (acc[6] / n * 8.0).min(1.0) * 2.0 - 1.0;
                o[6] = acc[7] / n * 2.0 - 1.0;
            }
        }
        out
    }

    #[test]
    fn patch_statistics_equal_their_definition_to_the_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // Sides the grid divides and ones it does not, smaller than it
        // (empty patches), black and saturated pixels among random ones.
        for (size, grid) in [(224u32, 7usize), (50, 7), (13, 4), (3, 7)] {
            let mut rgb: Vec<u8> = (0..size * size * 3).map(|_| rng.random()).collect();
            rgb[..6].fill(0);
            rgb[6..9].copy_from_slice(&[255, 0, 0]);
            let frame = Frame {
                index: 0,
                time: 0.0,
                duration: 1.0,
                size,
                rgb,
            };
            let mut enc = StatsEncoder::new(grid, size);
            let mut got = Vec::new();
            enc.encode_local(&frame, &mut got);
            let want = patches_as_defined(&frame, grid);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{size}×{size}, grid {grid}");
        }
    }
}
