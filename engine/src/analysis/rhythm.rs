//! The rhythm curve of the method: d_t = 1 − cos(p_t, p_{t−1}) between the
//! flattened patch features of adjacent 25 fps frames, d_0 = 1, linearly
//! interpolated to the 50 Hz token rate.

/// 1 − cosine similarity. Two all-zero vectors are identical (distance 0);
/// a zero vector against a non-zero one is maximally unlike (distance 1).
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        na += f64::from(x) * f64::from(x);
        nb += f64::from(y) * f64::from(y);
    }
    const EPS: f64 = 1e-12;
    match (na < EPS, nb < EPS) {
        (true, true) => 0.0,
        (true, false) | (false, true) => 1.0,
        _ => (1.0 - dot / (na.sqrt() * nb.sqrt())) as f32,
    }
}

/// Streaming form: feed each frame's flattened patch vector in order.
#[derive(Debug, Default, Clone)]
pub struct RhythmCurve {
    prev: Vec<f32>,
    pub values: Vec<f32>,
}

impl RhythmCurve {
    pub fn push(&mut self, local: &[f32]) {
        let d = if self.values.is_empty() {
            1.0
        } else {
            cosine_distance(local, &self.prev)
        };
        self.values.push(d);
        self.prev.clear();
        self.prev.extend_from_slice(local);
    }
}

/// Samples `curve` (at `from_rate` Hz, value k at time k / from_rate) at
/// `to_rate` Hz for `duration` seconds, linearly interpolating and holding
/// the last value past the end.
pub fn resample_linear(curve: &[f32], from_rate: f64, to_rate: f64, duration: f64) -> Vec<f32> {
    let n = (duration * to_rate).round() as usize;
    if curve.is_empty() {
        return vec![0.0; n];
    }
    (0..n)
        .map(|i| {
            let pos = i as f64 / to_rate * from_rate;
            let k = pos.floor() as usize;
            if k + 1 >= curve.len() {
                return curve[curve.len() - 1];
            }
            let frac = (pos - k as f64) as f32;
            curve[k] * (1.0 - frac) + curve[k + 1] * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_tiny_case() {
        // Three frames of two 2-d patches each (flattened to 4 values).
        let frames = [
            [1.0f32, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 1.0, 1.0],
        ];
        let mut c = RhythmCurve::default();
        for f in &frames {
            c.push(f);
        }
        // d_0 = 1 by definition; frames 0 and 1 are equal; frames 1 and 2:
        // dot = 1, |a| = √2, |b| = √3, so d = 1 − 1/√6.
        let expected = [1.0, 0.0, 1.0 - 1.0 / 6f32.sqrt()];
        for (got, want) in c.values.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{:?}", c.values);
        }
        // 25 fps → 50 Hz: every other sample is the midpoint.
        let up = resample_linear(&c.values, 25.0, 50.0, 3.0 / 25.0);
        assert_eq!(up.len(), 6);
        let mid = 0.5 * (0.0 + expected[2]);
        let want = [1.0, 0.5, 0.0, mid, expected[2], expected[2]];
        for (g, w) in up.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{up:?}");
        }
    }

    #[test]
    fn zero_vectors() {
        assert_eq!(cosine_distance(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(cosine_distance(&[0.0, 0.0], &[1.0, 0.0]), 1.0);
        assert!((cosine_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 2.0).abs() < 1e-6);
    }
}
