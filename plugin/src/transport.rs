//! The host's transport as the audio thread reads it: where the piece is,
//! where the next bar line falls, what tempo grid the host plays and when a
//! new one has settled, and whether the host is rendering faster than real
//! time. Pure functions of what the host says (and the clock, for the pace),
//! so they are tested here without a host. Allocation-free.

use std::time::Instant;

use clack_plugin::events::event_types::{TransportEvent, TransportFlags};
use vidmusician_engine::service::Meter;

use crate::playback::Grid;

/// A new tempo must hold this long (of processed audio) before the music is
/// made again for it: tempo ramps and automation do not regenerate on
/// every block.
pub(crate) const TEMPO_SETTLE_S: f64 = 0.3;

/// Seconds of audio over which the pace is judged, and the share of it in
/// host time below which the host is rendering.
const PACE_WINDOW_S: f64 = 1.0;
const PACE_RENDER_SHARE: f64 = 0.2;

/// Whether the music sounds, and the piece frame at the block's first
/// sample: the song position minus the music's `offset` (seconds). Hosts
/// without a seconds timeline play from `free_running` frames on.
pub(crate) fn position(
    transport: Option<&TransportEvent>,
    offset: f64,
    rate: f64,
    free_running: i64,
) -> (bool, i64) {
    match transport {
        Some(t) if t.flags.contains(TransportFlags::HAS_SECONDS_TIMELINE) => {
            let playing = t.flags.contains(TransportFlags::IS_PLAYING);
            let secs = t.song_pos_seconds.to_float() - offset;
            (playing, (secs * rate).round() as i64)
        }
        _ => (true, free_running - (offset * rate).round() as i64),
    }
}

/// The host's active loop as seconds of the piece (the song's loop less
/// the music's `offset`), when it has one with a seconds timeline.
pub(crate) fn loop_range(transport: Option<&TransportEvent>, offset: f64) -> Option<(f64, f64)> {
    let t = transport?;
    let flags = TransportFlags::IS_LOOP_ACTIVE | TransportFlags::HAS_SECONDS_TIMELINE;
    if !t.flags.contains(flags) {
        return None;
    }
    let (a, b) = (
        t.loop_start_seconds.to_float() - offset,
        t.loop_end_seconds.to_float() - offset,
    );
    (a.is_finite() && b.is_finite() && a < b).then_some((a, b))
}

/// The piece frame of the next bar line at or after `start`, from the
/// transport's bar position; without one, `start` itself.
pub(crate) fn next_bar(transport: Option<&TransportEvent>, start: i64, rate: f64) -> i64 {
    let Some(t) = transport else {
        return start;
    };
    let beats = TransportFlags::HAS_BEATS_TIMELINE | TransportFlags::HAS_TEMPO;
    let known = t.flags.contains(beats) && t.tempo.is_finite() && t.tempo > 0.0;
    if !known {
        return start;
    }
    let per_bar = f64::from(t.time_signature_numerator.max(1)) * 4.0
        / f64::from(t.time_signature_denominator.max(1));
    let beats_in = t.song_pos_beats.to_float() - t.bar_start.to_float();
    let mut to_bar = per_bar - beats_in.rem_euclid(per_bar);
    if to_bar >= per_bar - 1e-9 {
        // On a bar line already.
        to_bar = 0.0;
    }
    let secs = to_bar * 60.0 / t.tempo;
    start + (secs * rate).round() as i64
}

/// The host's tempo grid, and a song time (seconds) where one of its bars
/// starts (song time 0 without a bar position). `None` when the host gives
/// no tempo, or one outside 20–400 BPM. A signature the composer cannot
/// write (or none) is taken as 4/4.
pub(crate) fn host_grid(t: &TransportEvent) -> Option<(Grid, f64)> {
    let usable = t.flags.contains(TransportFlags::HAS_TEMPO)
        && t.tempo.is_finite()
        && (20.0..=400.0).contains(&t.tempo);
    if !usable {
        return None;
    }
    let meter = if t.flags.contains(TransportFlags::HAS_TIME_SIGNATURE) {
        Meter::checked(
            u32::from(t.time_signature_numerator),
            u32::from(t.time_signature_denominator),
        )
        .unwrap_or(Meter::COMMON)
    } else {
        Meter::COMMON
    };
    let beat_s = 60.0 / t.tempo;
    let bar_song = if t.flags.contains(TransportFlags::HAS_BEATS_TIMELINE) {
        t.song_pos_seconds.to_float()
            - (t.song_pos_beats.to_float() - t.bar_start.to_float()) * beat_s
    } else {
        0.0
    };
    let grid = Grid {
        bpm: t.tempo,
        meter,
    };
    Some((grid, bar_song))
}

fn same(a: Option<Grid>, b: Grid) -> bool {
    a.is_some_and(|a| (a.bpm - b.bpm).abs() <= 1e-6 && a.meter == b.meter)
}

/// Debounces the host's tempo: a grid is asked for once it has held for
/// [`TEMPO_SETTLE_S`], and only once.
#[derive(Default)]
pub(crate) struct TempoWatch {
    candidate: Option<Grid>,
    settled_frames: u64,
    /// The grid last asked for.
    requested: Option<Grid>,
}

impl TempoWatch {
    /// The host played `now` for a block of `frames` at `rate`; `playing`
    /// is the grid of the newest music. True when music should now be made
    /// for `now`: it has settled, and neither plays nor was asked for.
    pub(crate) fn hear(
        &mut self,
        now: Grid,
        frames: usize,
        rate: f64,
        playing: Option<Grid>,
    ) -> bool {
        if !same(self.candidate, now) {
            self.candidate = Some(now);
            self.settled_frames = 0;
        }
        self.settled_frames += frames as u64;
        let settled = self.settled_frames as f64 >= TEMPO_SETTLE_S * rate;
        if settled && !same(playing, now) && !same(self.requested, now) {
            self.requested = Some(now);
            return true;
        }
        false
    }
}

/// Tells a host that renders faster than real time without announcing
/// offline mode (Ardour's export) from one playing in real time, by the
/// host's own time between our blocks: in real time it adds up to the
/// audio's duration (less our processing), in a render to a small part of
/// it. Over whole windows of audio, so that hosts that process a few
/// hundred milliseconds ahead (REAPER's anticipative processing) still
/// count as real time. Our own waits do not count: they are inside blocks.
#[derive(Default)]
pub(crate) struct Pace {
    last_end: Option<Instant>,
    /// Audio and host time in the window so far, seconds.
    audio: f64,
    host: f64,
    fast: bool,
}

impl Pace {
    /// A block of `frames` starts at `now`; true while the host renders
    /// faster than real time.
    pub(crate) fn block_starts(&mut self, now: Instant, frames: usize, rate: f64) -> bool {
        if let Some(end) = self.last_end {
            self.host += now.saturating_duration_since(end).as_secs_f64();
        }
        self.audio += frames as f64 / rate;
        if self.audio >= PACE_WINDOW_S {
            self.fast = self.host < PACE_RENDER_SHARE * self.audio;
            self.audio = 0.0;
            self.host = 0.0;
        }
        self.fast
    }

    pub(crate) fn block_ends(&mut self, now: Instant) {
        self.last_end = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clack_plugin::events::event_types::TransportEvent;
    use clack_plugin::events::{EventFlags, EventHeader};
    use clack_plugin::utils::{BeatTime, SecondsTime};

    use super::*;

    const RATE: f64 = 48_000.0;

    /// A transport at `secs` seconds and `beats` beats into the song, the
    /// bar that holds it starting at `bar_start` beats.
    fn at(secs: f64, beats: f64, bar_start: f64, tempo: f64, sig: (u16, u16)) -> TransportEvent {
        TransportEvent {
            header: EventHeader::new_core(0, EventFlags::empty()),
            flags: TransportFlags::HAS_TEMPO
                | TransportFlags::HAS_BEATS_TIMELINE
                | TransportFlags::HAS_SECONDS_TIMELINE
                | TransportFlags::HAS_TIME_SIGNATURE
                | TransportFlags::IS_PLAYING,
            song_pos_beats: BeatTime::from_float(beats),
            song_pos_seconds: SecondsTime::from_float(secs),
            tempo,
            tempo_inc: 0.0,
            loop_start_beats: BeatTime::from_float(0.0),
            loop_end_beats: BeatTime::from_float(0.0),
            loop_start_seconds: SecondsTime::from_float(0.0),
            loop_end_seconds: SecondsTime::from_float(0.0),
            bar_start: BeatTime::from_float(bar_start),
            bar_number: 0,
            time_signature_numerator: sig.0,
            time_signature_denominator: sig.1,
        }
    }

    #[test]
    fn the_loop_is_read_in_piece_time_when_it_is_active() {
        let mut t = at(10.0, 20.0, 20.0, 120.0, (4, 4));
        t.loop_start_seconds = SecondsTime::from_float(4.0);
        t.loop_end_seconds = SecondsTime::from_float(8.0);
        assert_eq!(loop_range(Some(&t), 1.5), None, "no loop is active");
        t.flags |= TransportFlags::IS_LOOP_ACTIVE;
        assert_eq!(loop_range(Some(&t), 1.5), Some((2.5, 6.5)));
        t.loop_end_seconds = SecondsTime::from_float(4.0);
        assert_eq!(loop_range(Some(&t), 1.5), None, "an empty loop");
        assert_eq!(loop_range(None, 0.0), None);
    }

    #[test]
    fn the_piece_frame_is_the_song_time_less_the_offset() {
        let t = at(10.0, 20.0, 20.0, 120.0, (4, 4));
        assert_eq!(position(Some(&t), 2.5, RATE, 0), (true, 360_000));
        let mut stopped = t;
        stopped.flags.remove(TransportFlags::IS_PLAYING);
        assert_eq!(position(Some(&stopped), 12.0, RATE, 0), (false, -96_000));
        // No transport: frames since activation, less the offset.
        assert_eq!(position(None, 1.0, RATE, 100_000), (true, 52_000));
    }

    #[test]
    fn the_next_bar_line_follows_the_signature_and_the_tempo() {
        // 4/4 at 120: half a second a beat; 1.5 beats into a bar, the next
        // bar is 2.5 beats (1.25 s) on.
        let t = at(10.75, 21.5, 20.0, 120.0, (4, 4));
        assert_eq!(next_bar(Some(&t), 1000, RATE), 1000 + 60_000);
        // On a bar line: now.
        let t = at(10.0, 20.0, 20.0, 120.0, (4, 4));
        assert_eq!(next_bar(Some(&t), 1000, RATE), 1000);
        // 6/8 is three quarter notes a bar: 1 beat in, 2 to go (at 90, 4/3 s).
        let t = at(0.0, 13.0, 12.0, 90.0, (6, 8));
        assert_eq!(next_bar(Some(&t), 0, RATE), 64_000);
        // Without a beat timeline or a tempo: the block's start.
        let mut no_beats = t;
        no_beats.flags.remove(TransportFlags::HAS_BEATS_TIMELINE);
        assert_eq!(next_bar(Some(&no_beats), 7, RATE), 7);
        let mut no_tempo = t;
        no_tempo.tempo = 0.0;
        assert_eq!(next_bar(Some(&no_tempo), 7, RATE), 7);
        assert_eq!(next_bar(None, 7, RATE), 7);
    }

    #[test]
    fn the_host_grid_and_where_its_bar_starts() {
        // 3/4 at 90 (2/3 s a beat), 7.5 s and 11.25 beats in, the bar at 9
        // beats: the bar started 2.25 beats (1.5 s) before, at 6 s.
        let t = at(7.5, 11.25, 9.0, 90.0, (3, 4));
        let (g, bar) = host_grid(&t).unwrap();
        assert_eq!(g.bpm, 90.0);
        assert_eq!(g.meter, Meter::checked(3, 4).unwrap());
        assert!((bar - 6.0).abs() < 1e-9, "{bar}");
        // A signature the composer cannot write is 4/4.
        let odd = at(0.0, 0.0, 0.0, 120.0, (5, 3));
        assert_eq!(host_grid(&odd).unwrap().0.meter, Meter::COMMON);
        // No tempo, or one out of range: no grid.
        for tempo in [0.0, 19.0, 401.0, f64::NAN] {
            assert!(host_grid(&at(0.0, 0.0, 0.0, tempo, (4, 4))).is_none());
        }
        let mut none = t;
        none.flags.remove(TransportFlags::HAS_TEMPO);
        assert!(host_grid(&none).is_none());
    }

    #[test]
    fn a_tempo_is_asked_for_once_after_it_settles() {
        let g = |bpm| Grid {
            bpm,
            meter: Meter::COMMON,
        };
        let mut w = TempoWatch::default();
        let block = 4800; // 0.1 s
        // 0.1, 0.2 s: not yet; at 0.3 s: ask; then never again for it.
        assert!(!w.hear(g(100.0), block, RATE, None));
        assert!(!w.hear(g(100.0), block, RATE, None));
        assert!(w.hear(g(100.0), block, RATE, None));
        assert!(!w.hear(g(100.0), block, RATE, None));
        // A ramp: each tempo for a block only, nothing asked.
        for k in 0..20 {
            assert!(!w.hear(g(101.0 + f64::from(k)), block, RATE, None));
        }
        // The music already plays at this grid: nothing to ask for.
        let mut w = TempoWatch::default();
        for _ in 0..5 {
            assert!(!w.hear(g(120.0), block, RATE, Some(g(120.0))));
        }
    }

    #[test]
    fn a_render_is_told_from_real_time_by_the_hosts_time() {
        let t0 = Instant::now();
        let block = 6000; // 0.125 s of audio
        // Real time: 0.1 s of host time per block.
        let mut p = Pace::default();
        let mut now = t0;
        for _ in 0..30 {
            assert!(!p.block_starts(now, block, RATE));
            p.block_ends(now + Duration::from_millis(5));
            now += Duration::from_millis(125);
        }
        // A render: a millisecond of host time per block, judged after a
        // whole second of audio.
        let mut p = Pace::default();
        let mut fast = Vec::new();
        for _ in 0..12 {
            fast.push(p.block_starts(now, block, RATE));
            p.block_ends(now);
            now += Duration::from_millis(1);
        }
        assert!(!fast[..7].iter().any(|&f| f), "{fast:?}");
        assert!(fast[7..].iter().all(|&f| f), "{fast:?}");
    }
}
