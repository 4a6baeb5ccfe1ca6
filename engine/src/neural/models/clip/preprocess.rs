//! Frames to pixels as `CLIPImageProcessor` makes them: the shortest edge resized with
//! PIL's bicubic filter, a centre crop, rescaling and normalisation.
//!
//! The resize is our own rendering of Pillow's `ImagingResample` (`libImaging/Resample.c`)
//! for 8-bit images, so the pixels equal PIL's exactly: a separable convolution,
//! horizontal pass first, with the bicubic kernel (a = −0.5) whose support widens by
//! the downscale factor (PIL's antialiasing), weights normalised per output pixel,
//! then turned into 22-bit fixed point, and each pass rounded and clamped to u8.

use candle_core::{Device, Tensor};

use super::config::PreprocessConfig;
use crate::{Error, Result};

/// An RGB frame: `width × height` pixels, row-major, 3 bytes each, no row padding.
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub width: usize,
    pub height: usize,
    pub rgb: &'a [u8],
}

impl<'a> RgbImage<'a> {
    /// Checks that `rgb` holds exactly `width × height × 3` bytes.
    pub fn new(width: usize, height: usize, rgb: &'a [u8]) -> Result<Self> {
        let img = Self { width, height, rgb };
        img.check()?;
        Ok(img)
    }

    fn check(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::InvalidSetting(format!(
                "an image of {}×{} pixels has nothing to encode",
                self.width, self.height
            )));
        }
        let want = self
            .width
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(3));
        if want != Some(self.rgb.len()) {
            return Err(Error::InvalidSetting(format!(
                "an RGB image of {}×{} pixels needs {} bytes, got {}",
                self.width,
                self.height,
                want.map(|n| n.to_string())
                    .unwrap_or_else(|| "too many".into()),
                self.rgb.len()
            )));
        }
        Ok(())
    }
}

/// PIL's fixed point for 8-bit resampling: 32 bits less 8 for the pixel and 2 for
/// the sums' headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel (Keys, a = −0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one axis: for each output pixel, the first input pixel and the
/// fixed-point weights of the run of input pixels from there.
struct Taps {
    first: Vec<usize>,
    /// `out_size × width`; unused tails are 0.
    weights: Vec<i32>,
    width: usize,
}

impl Taps {
    /// PIL's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the whole
    /// input axis (`in_size` pixels) onto `out_size`.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let width = support.ceil() as usize * 2 + 1;
        let mut first = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * width];
        let mut k = vec![0f64; width];
        for (xx, row) in weights.chunks_exact_mut(width).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates towards zero; the clamp makes that moot below 0.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize)
                .saturating_sub(xmin)
                .min(width);
            let mut total = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = bicubic((x as f64 + xmin as f64 - center + 0.5) / filter_scale);
                *kx = w;
                total += w;
            }
            for (x, out) in row.iter_mut().enumerate().take(xmax) {
                let w = if total != 0.0 { k[x] / total } else { k[x] };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                // Rounded half away from zero, as PIL does.
                *out = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            first.push(xmin);
        }
        Self {
            first,
            weights,
            width,
        }
    }
}

/// A fixed-point sum back to a byte, as PIL's `clip8`.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB image to `out_w × out_h` as PIL's `Image.resize(…, BICUBIC)` does.
///
/// Each pass rounds to bytes, so the order of the two passes shows in the result.
/// Pillow (13, what the fixtures were made with) runs the horizontal pass first
/// unless the height shrinks by more than twice as many pixels as the width
/// (`ImagingResampleInner`); older Pillow releases always ran it first. The two agree
/// on landscape frames and on portrait 9:16 frames resized to CLIP's sizes.
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> Result<Vec<u8>> {
    img.check()?;
    if out_w == 0 || out_h == 0 {
        return Err(Error::InvalidSetting(format!(
            "cannot resize an image to {out_w}×{out_h} pixels"
        )));
    }
    let (w, h) = (img.width, img.height);
    if (w, h) == (out_w, out_h) {
        return Ok(img.rgb.to_vec());
    }
    let shrink_h = h as i64 - out_h as i64;
    let shrink_w = w as i64 - out_w as i64;
    Ok(if shrink_h > 0 && shrink_h > shrink_w * 2 {
        // The height changes here, so the vertical pass always runs.
        let mid = vertical(img.rgb, w, h, out_h);
        if out_w == w {
            mid
        } else {
            horizontal(&mid, w, out_h, out_w)
        }
    } else {
        let mid = (out_w != w).then(|| horizontal(img.rgb, w, h, out_w));
        match (mid, out_h == h) {
            (Some(mid), true) => mid,
            (Some(mid), false) => vertical(&mid, out_w, h, out_h),
            (None, _) => vertical(img.rgb, w, h, out_h),
        }
    })
}

/// PIL's horizontal pass: `w × h` → `out_w × h`.
fn horizontal(src: &[u8], w: usize, h: usize, out_w: usize) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let taps = Taps::new(w, out_w);
    let mut out = vec![0u8; out_w * h * 3];
    for (line, dst) in src.chunks_exact(w * 3).zip(out.chunks_exact_mut(out_w * 3)) {
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let k = &taps.weights[xx * taps.width..(xx + 1) * taps.width];
            let mut acc = [round; 3];
            for (kx, s) in k.iter().zip(line[taps.first[xx] * 3..].chunks_exact(3)) {
                for c in 0..3 {
                    acc[c] += i64::from(s[c]) * i64::from(*kx);
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// PIL's vertical pass: `w × h` → `w × out_h`.
fn vertical(src: &[u8], w: usize, h: usize, out_h: usize) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let taps = Taps::new(h, out_h);
    let row = w * 3;
    let mut out = vec![0u8; row * out_h];
    let mut acc = vec![0i64; row];
    for (yy, dst) in out.chunks_exact_mut(row).enumerate() {
        let k = &taps.weights[yy * taps.width..(yy + 1) * taps.width];
        acc.fill(round);
        for (ky, line) in k.iter().zip(src[taps.first[yy] * row..].chunks_exact(row)) {
            if *ky == 0 {
                continue;
            }
            for (a, s) in acc.iter_mut().zip(line) {
                *a += i64::from(*s) * i64::from(*ky);
            }
        }
        for (d, a) in dst.iter_mut().zip(&acc) {
            *d = clip8(*a);
        }
    }
    out
}

/// transformers' `get_resize_output_image_size` with `default_to_square=False`: the
/// shortest edge becomes `shortest`, the other `int(shortest · long / short)`.
/// Returns `(width, height)`.
pub fn resized_size(width: usize, height: usize, shortest: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // The reference computes in float64 and truncates.
    let new_long = (shortest as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (shortest, new_long)
    } else {
        (new_long, shortest)
    }
}

/// Frames to `(batch, 3, crop_h, crop_w)` f32 pixels, as `CLIPImageProcessor`.
pub fn preprocess(cfg: &PreprocessConfig, images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let (ch, cw) = cfg.crop;
    let plane = ch * cw;
    let mut data = Vec::with_capacity(images.len() * 3 * plane);
    for img in images {
        img.check()?;
        let (w, h) = if cfg.do_resize {
            resized_size(img.width, img.height, cfg.shortest_edge)
        } else {
            (img.width, img.height)
        };
        let resized = if cfg.do_resize {
            resize_bicubic(img, w, h)?
        } else {
            img.rgb.to_vec()
        };
        // transformers' centre crop: offsets `(size − crop) // 2`. It would pad an
        // image smaller than the crop; no CLIP checkpoint asks for that.
        let (top, left, rows, cols) = if cfg.do_center_crop {
            if h < ch || w < cw {
                return Err(Error::InvalidSetting(format!(
                    "an image of {w}×{h} pixels after resizing is smaller than the {cw}×{ch} crop"
                )));
            }
            ((h - ch) / 2, (w - cw) / 2, ch, cw)
        } else {
            (0, 0, h, w)
        };
        if (rows, cols) != (ch, cw) {
            return Err(Error::InvalidSetting(format!(
                "an image of {cols}×{rows} pixels after preprocessing is not the model's {cw}×{ch}"
            )));
        }
        for c in 0..3 {
            for y in top..top + rows {
                let line = &resized[(y * w + left) * 3..(y * w + left + cols) * 3];
                data.extend(line.chunks_exact(3).map(|p| pixel(cfg, p[c], c)));
            }
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, ch, cw), device)?)
}

/// One byte to a model input, in the reference's precision: rescaled in float64 and
/// cast to float32, normalised in float32.
fn pixel(cfg: &PreprocessConfig, v: u8, c: usize) -> f32 {
    let x = if cfg.do_rescale {
        (f64::from(v) * cfg.rescale_factor) as f32
    } else {
        f32::from(v)
    };
    if cfg.do_normalize {
        (x - cfg.mean[c]) / cfg.std[c]
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(57, 40), (43, 40), (22, 40), (100, 7), (3, 1)] {
            let t = Taps::new(i, o);
            for row in t.weights.chunks_exact(t.width) {
                let s: i64 = row.iter().map(|&k| i64::from(k)).sum();
                // Each weight rounds on its own: the sum is within a unit per tap.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.width as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_through_any_resize() {
        let rgb: Vec<u8> = [10u8, 128, 250].repeat(13 * 9);
        let img = RgbImage::new(13, 9, &rgb).unwrap();
        for (w, h) in [(5, 3), (40, 27), (13, 20)] {
            let out = resize_bicubic(&img, w, h).unwrap();
            assert_eq!(out, [10u8, 128, 250].repeat(w * h), "{w}×{h}");
        }
    }

    #[test]
    fn resized_size_truncates_the_long_edge() {
        assert_eq!(resized_size(57, 43, 40), (53, 40));
        assert_eq!(resized_size(40, 64, 40), (40, 64));
        assert_eq!(resized_size(30, 22, 40), (54, 40));
        assert_eq!(resized_size(1920, 1080, 224), (398, 224));
    }

    #[test]
    fn a_short_buffer_is_an_error() {
        assert!(RgbImage::new(4, 4, &[0; 47]).is_err());
        assert!(RgbImage::new(0, 4, &[]).is_err());
        // Fields are public: a hand-made view is checked again where it is used.
        let bad = RgbImage {
            width: 4,
            height: 4,
            rgb: &[0; 12],
        };
        assert!(resize_bicubic(&bad, 2, 2).is_err());
        let ok = RgbImage::new(2, 2, &[0; 12]).unwrap();
        assert!(resize_bicubic(&ok, 0, 3).is_err());
    }
}
