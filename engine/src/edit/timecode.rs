//! SMPTE timecodes (`HH:MM:SS:FF`, drop-frame `HH:MM:SS;FF`) and clock times
//! (`12.5`, `MM:SS.sss`, `HH:MM:SS.sss`) as seconds.

/// A frame rate as timecodes count it: `nominal` frame labels per second, each
/// frame lasting `den / num` seconds (30 labels at 30000/1001 for 29.97).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub nominal: u32,
    pub num: u32,
    pub den: u32,
}

impl Rate {
    /// 29.97 fps, the only rate drop-frame timecode is read at.
    pub const NTSC_30: Rate = Rate {
        nominal: 30,
        num: 30000,
        den: 1001,
    };

    /// The rate for `fps`: whole rates as they are, and the NTSC rates
    /// (23.976, 29.97, 47.952, 59.94, 119.88) as `n × 1000/1001`.
    pub fn from_fps(fps: f64) -> Result<Rate, String> {
        if !fps.is_finite() || !(1.0..=1000.0).contains(&fps) {
            return Err(format!("frame rate {fps} is not between 1 and 1000 fps"));
        }
        let whole = fps.round();
        if (fps - whole).abs() < 1e-3 {
            let n = whole as u32;
            return Ok(Rate {
                nominal: n,
                num: n,
                den: 1,
            });
        }
        let ntsc = (fps * 1001.0 / 1000.0).round();
        if (fps - ntsc * 1000.0 / 1001.0).abs() < 2e-3 {
            let n = ntsc as u32;
            return Ok(Rate {
                nominal: n,
                num: n * 1000,
                den: 1001,
            });
        }
        Err(format!(
            "frame rate {fps} is neither a whole rate nor an NTSC rate (23.976, 29.97, 59.94)"
        ))
    }

    /// Seconds at the start of frame `frames`.
    pub fn seconds(self, frames: u64) -> f64 {
        (frames as f64 * f64::from(self.den)) / f64::from(self.num)
    }
}

/// Reads `HH:MM:SS:FF` (or `HH:MM:SS;FF`, also with `.` or `,` before the
/// frames) into a frame count.
///
/// With `drop_frame` (or a `;` in the timecode) it is 29.97 drop-frame: frame
/// labels 0 and 1 are skipped at the start of every minute except every tenth,
/// so `frames = (3600·HH + 60·MM + SS)·30 + FF − 2·(M − ⌊M/10⌋)` where
/// `M = 60·HH + MM`. Returns the frame count and the rate it counts at.
pub fn smpte_frames(tc: &str, rate: Rate, drop_frame: bool) -> Result<(u64, Rate), String> {
    let bad = || format!("timecode {tc} is not HH:MM:SS:FF");
    let drop = drop_frame || tc.contains(';');
    let parts: Vec<&str> = tc.split([':', ';', '.', ',']).collect();
    if parts.len() != 4 || parts.iter().any(|p| p.is_empty() || p.len() > 3) {
        return Err(bad());
    }
    let mut n = [0u64; 4];
    for (slot, p) in n.iter_mut().zip(&parts) {
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        *slot = p.parse().map_err(|_| bad())?;
    }
    let [hh, mm, ss, ff] = n;
    if mm > 59 || ss > 59 {
        return Err(format!(
            "timecode {tc}: minutes and seconds must be below 60"
        ));
    }
    let rate = if drop { Rate::NTSC_30 } else { rate };
    if ff >= u64::from(rate.nominal) {
        return Err(format!(
            "timecode {tc}: frame {ff} does not exist at {} frames per second{}",
            rate.nominal,
            if drop {
                " (drop-frame)"
            } else {
                "; give the edit's frame rate"
            }
        ));
    }
    let minutes = 60 * hh + mm;
    let mut frames = (3600 * hh + 60 * mm + ss) * u64::from(rate.nominal) + ff;
    if drop {
        if ss == 0 && ff < 2 && mm % 10 != 0 {
            return Err(format!(
                "timecode {tc} does not exist in drop-frame (frames 0 and 1 are skipped in minute {mm})"
            ));
        }
        frames -= 2 * (minutes - minutes / 10);
    }
    Ok((frames, rate))
}

/// [`smpte_frames`] as seconds.
pub fn smpte_seconds(tc: &str, rate: Rate, drop_frame: bool) -> Result<f64, String> {
    let (frames, rate) = smpte_frames(tc, rate, drop_frame)?;
    Ok(rate.seconds(frames))
}

/// Reads a clock time: `12.5` (seconds), `MM:SS.sss` or `HH:MM:SS.sss`.
pub fn clock_seconds(s: &str) -> Result<f64, String> {
    let bad = || format!("{s} is not a time (seconds, MM:SS.sss or HH:MM:SS.sss)");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let (last, whole) = parts.split_last().ok_or_else(bad)?;
    let sec: f64 = if last.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        last.parse().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    let mut total = 0.0;
    for p in whole {
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let v: u64 = p.parse().map_err(|_| bad())?;
        total = total * 60.0 + v as f64;
    }
    if !whole.is_empty() && sec >= 60.0 {
        return Err(format!("{s}: seconds must be below 60"));
    }
    if parts.len() == 3 && parts[1].parse::<u64>().map_err(|_| bad())? > 59 {
        return Err(format!("{s}: minutes must be below 60"));
    }
    Ok(total * 60.0 + sec)
}
