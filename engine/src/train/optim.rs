//! AdamW (Loshchilov & Hutter, decoupled weight decay; PyTorch's `AdamW`
//! update), clipping by the global gradient norm, and a warm-up then cosine
//! learning rate. Ours rather than candle-nn's because its state must go into a
//! checkpoint for an exact resume, and candle-nn's optimiser keeps it private.

use candle_core::{Tensor, Var, backprop::GradStore};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Per trainable tensor, the running moments.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates made so far.
    step: usize,
    cfg: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.zeros_like();
        Ok(Self {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            vars,
            step: 0,
            cfg,
        })
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The moments, in the order of the vars: what a checkpoint saves.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Restores the state a checkpoint saved.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, step: usize) -> Result<()> {
        if m.len() != self.vars.len() || v.len() != self.vars.len() {
            return Err(Error::InvalidSetting(
                "optimiser state for another set of tensors".into(),
            ));
        }
        for ((var, m), v) in self.vars.iter().zip(&m).zip(&v) {
            if m.dims() != var.dims() || v.dims() != var.dims() {
                return Err(Error::InvalidSetting(
                    "optimiser state of another shape".into(),
                ));
            }
        }
        self.m = m;
        self.v = v;
        self.step = step;
        Ok(())
    }

    /// One update at learning rate `lr`; a tensor without a gradient is left
    /// alone (its moments decay as PyTorch's do not: it has none there either).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let (fix1, fix2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for ((var, m), v) in self.vars.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / fix1)? / ((&*v / fix2)?.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Scales `grads` of `vars` so that their global L2 norm is at most `max`;
/// returns the norm before.
pub fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        return Err(Error::InvalidSetting(format!(
            "the gradient's norm is {norm}: training diverged (lower the learning rate)"
        )));
    }
    if norm > max && max > 0.0 {
        let scale = max / norm;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// The learning rate at `step` (from 0): linear warm-up from 0 to `peak` over
/// `warmup` steps, then a cosine down to zero at `total`.
pub fn learning_rate(step: usize, peak: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let done = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_the_update_pytorch_makes() {
        // torch.optim.AdamW(lr=0.1, weight_decay=0.01) on p = [1, -2] with the
        // gradient [0.5, 0.25], twice: p after each step, computed by hand from
        // PyTorch's update rule.
        let p = Var::from_slice(&[1f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![p.clone()], AdamWConfig::default()).unwrap();
        let loss = |p: &Var| {
            (p.as_tensor() * Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let mut expected = [1f64, -2.0];
        for _ in 0..2 {
            let g = loss(&p).backward().unwrap();
            opt.step(&g, 0.1).unwrap();
            // Constant gradients make m̂ = g and v̂ = g², so each step moves by
            // lr · g / (|g| + eps) after the decay.
            for (e, g) in expected.iter_mut().zip([0.5f64, 0.25]) {
                *e = *e * (1.0 - 0.1 * 0.01) - 0.1 * g / (g.abs() + 1e-8);
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} against {expected:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_norm_and_reports_it() {
        let p = Var::from_slice(&[0f32, 0.0], 2, &Device::Cpu).unwrap();
        let w = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        let mut g = (p.as_tensor() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let norm = clip_grad_norm(std::slice::from_ref(&p), &mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = g.get(p.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn the_learning_rate_warms_up_then_falls_to_zero() {
        assert!((learning_rate(0, 1.0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((learning_rate(3, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(4, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(12, 1.0, 4, 20) - 0.5).abs() < 1e-12);
        assert!(learning_rate(20, 1.0, 4, 20).abs() < 1e-12);
        let falling: Vec<f64> = (4..=20).map(|s| learning_rate(s, 1.0, 4, 20)).collect();
        assert!(falling.windows(2).all(|w| w[1] <= w[0]));
    }
}
