//! The audio thread's player: places the engine's chunks in preallocated
//! tables and copies from them as a pure function of the song position.
//! Never allocates, frees, locks or blocks (except the bounded wait of
//! offline rendering); chunks it lets go of go back through the engine's
//! return ring, takes it lets go of go back to the main thread.
//!
//! A new take (after a tempo change, say) waits as `next` until its music
//! around the next bar has arrived, then replaces the current take at that
//! bar with a short crossfade.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmusician_engine::service::Meter;
use vidmusician_engine::service::{AudioChunk, ChunkReader};

/// Chunk slots preallocated per take. With the plugin's chunk size chosen
/// as `total / MAX_SLOTS` (at least 4096 frames), any length fits.
pub const MAX_SLOTS: usize = 8192;

/// The host's bar grid a take was written on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Quarter notes per minute.
    pub bpm: f64,
    pub meter: Meter,
}

/// One generated piece on its way to the audio thread.
pub struct Take {
    pub reader: ChunkReader,
    pub chunk_frames: usize,
    /// Length of the piece, frames at the host's rate.
    pub total_frames: u64,
    /// The tempo and time signature it was made for, when it follows the
    /// host's.
    pub grid: Option<Grid>,
    /// A quick take of the start only, to be replaced by the full piece.
    pub preview: bool,
    /// The count of asks for new music this take answers (see
    /// `Shared::asked`): a bounce waits for the take that answers its ask.
    pub answers: u64,
}

type Slots = Vec<Option<Arc<AudioChunk>>>;

struct Loaded {
    take: Box<Take>,
    slots: Slots,
}

/// Chunks taken in per block and take: a whole piece arriving at once is
/// spread over a few blocks instead of one long one.
const DRAIN_PER_POLL: usize = 32;

impl Loaded {
    fn drain(&mut self) {
        self.drain_up_to(DRAIN_PER_POLL);
    }

    /// Takes in chunks until the block `[start, start + len)` has its music,
    /// or nothing more has arrived: no more than the block needs, since a
    /// long piece's hundreds of chunks would make one block slow.
    fn drain_until_ready(&mut self, start: i64, len: usize) {
        while !self.ready(start, len) && self.drain_up_to(DRAIN_PER_POLL) > 0 {}
    }

    /// Takes in at most `max` chunks; returns how many it took.
    fn drain_up_to(&mut self, max: usize) -> usize {
        for taken in 0..max {
            let Some(chunk) = self.take.reader.pop() else {
                return taken;
            };
            let idx = (chunk.start / self.take.chunk_frames as u64) as usize;
            match self.slots.get_mut(idx) {
                Some(slot) => {
                    if let Some(old) = slot.replace(chunk) {
                        retire(&mut self.take.reader, old);
                    }
                }
                None => retire(&mut self.take.reader, chunk),
            }
        }
        max
    }

    /// Empties the table (chunks back to the engine); returns the take and
    /// the table for reuse.
    fn unload(mut self) -> (Box<Take>, Slots) {
        for slot in self.slots.iter_mut() {
            if let Some(c) = slot.take() {
                retire(&mut self.take.reader, c);
            }
        }
        (self.take, self.slots)
    }

    /// True when `[start, start + len)` is missing music that will never
    /// come: the request ended (finished or cancelled) and every chunk it
    /// sent has been taken in.
    fn cannot_fill(&self, start: i64, len: usize) -> bool {
        self.take.reader.is_finished() && !self.ready(start, len)
    }

    fn ready(&self, start: i64, len: usize) -> bool {
        let total = self.take.total_frames as i64;
        let a = start.max(0);
        let b = (start + len as i64).min(total);
        if a >= b {
            return true;
        }
        let cf = self.take.chunk_frames as i64;
        (a / cf..=(b - 1) / cf).all(|i| self.slots.get(i as usize).is_some_and(Option::is_some))
    }

    /// Adds frames from `start` on, times `gain` and the fade `env`.
    fn mix(&self, start: i64, gain: f32, env: Fade, left: &mut [f32], right: &mut [f32]) {
        let cf = self.take.chunk_frames as i64;
        let total = self.take.total_frames as i64;
        let n = left.len().min(right.len());
        let mut i = 0usize;
        while i < n {
            let f = start + i as i64;
            if f < 0 {
                i = (-start).min(n as i64) as usize;
                continue;
            }
            if f >= total {
                break;
            }
            let idx = (f / cf) as usize;
            let within = (f % cf) as usize;
            let run = (cf as usize - within).min(n - i).min((total - f) as usize);
            match self.slots.get(idx) {
                Some(Some(chunk)) if within < chunk.frames() => {
                    let run = run.min(chunk.frames() - within);
                    for k in 0..run {
                        let g = gain * env.at(f + k as i64);
                        left[i + k] += chunk.left[within + k] * g;
                        right[i + k] += chunk.right[within + k] * g;
                    }
                    i += run;
                }
                _ => i += run,
            }
        }
    }
}

/// A gain envelope over piece frames.
#[derive(Clone, Copy)]
enum Fade {
    Full,
    /// 1 before `at`, ramping to 0 over `len` frames.
    Out {
        at: i64,
        len: i64,
    },
    /// 0 before `at`, ramping to 1 over `len` frames.
    In {
        at: i64,
        len: i64,
    },
}

impl Fade {
    fn at(self, f: i64) -> f32 {
        let ramp = |at: i64, len: i64| ((f - at) as f32 / len.max(1) as f32).clamp(0.0, 1.0);
        match self {
            Fade::Full => 1.0,
            Fade::Out { at, len } => 1.0 - ramp(at, len),
            Fade::In { at, len } => ramp(at, len),
        }
    }
}

pub struct Player {
    current: Option<Loaded>,
    next: Option<Loaded>,
    /// Empty slot tables, allocated up front: one per take in flight.
    spare: [Option<Slots>; 2],
    /// Piece frame where the crossfade from `current` to `next` starts.
    switch_at: Option<i64>,
    /// Crossfade length, frames.
    xfade: i64,
    /// New takes from the main thread.
    incoming: rtrb::Consumer<Box<Take>>,
    /// Finished takes back to the main thread, to be dropped there.
    outgoing: rtrb::Producer<Box<Take>>,
    /// Finished takes the main thread has not had room for yet.
    parked: [Option<Box<Take>>; 2],
    /// An offline wait ran out (the engine failed or is stuck): later
    /// blocks do not wait again until a new take arrives, so a bounce never
    /// hangs block after block.
    stalled: bool,
}

impl Player {
    /// Allocates everything the audio thread will ever use.
    pub fn new(
        incoming: rtrb::Consumer<Box<Take>>,
        outgoing: rtrb::Producer<Box<Take>>,
        xfade_frames: usize,
    ) -> Self {
        let table = || {
            let mut s = Vec::with_capacity(MAX_SLOTS);
            s.resize_with(MAX_SLOTS, || None);
            Some(s)
        };
        Self {
            current: None,
            next: None,
            spare: [table(), table()],
            switch_at: None,
            xfade: xfade_frames.max(1) as i64,
            incoming,
            outgoing,
            parked: [None, None],
            stalled: false,
        }
    }

    fn give_back(&mut self, take: Box<Take>) {
        if let Err(rtrb::PushError::Full(t)) = self.outgoing.push(take) {
            // Two takes at most are ever let go of between main-thread turns.
            if let Some(p) = self.parked.iter_mut().find(|p| p.is_none()) {
                *p = Some(t);
            } else {
                std::mem::forget(t);
            }
        }
    }

    fn store_table(&mut self, table: Slots) {
        if let Some(s) = self.spare.iter_mut().find(|s| s.is_none()) {
            *s = Some(table);
        }
    }

    /// Takes in whatever arrived: new takes, ready chunks.
    pub fn poll(&mut self) {
        for i in 0..self.parked.len() {
            if let Some(p) = self.parked[i].take()
                && let Err(rtrb::PushError::Full(p)) = self.outgoing.push(p)
            {
                self.parked[i] = Some(p);
            }
        }
        let room = self.parked.iter().any(Option::is_none);
        if room && let Ok(new) = self.incoming.pop() {
            self.stalled = false;
            if let Some(old) = self.next.take() {
                // A newer take overtakes one still waiting for its bar.
                let (take, table) = old.unload();
                self.give_back(take);
                self.store_table(table);
                self.switch_at = None;
            }
            let table = self.spare.iter_mut().find_map(Option::take);
            match table {
                Some(slots) => {
                    let loaded = Loaded { take: new, slots };
                    if self.current.is_none() {
                        self.current = Some(loaded);
                    } else {
                        self.next = Some(loaded);
                    }
                }
                // Cannot happen (two tables, at most two takes held);
                // refuse the take rather than allocate.
                None => self.give_back(new),
            }
        }
        if let Some(c) = self.current.as_mut() {
            c.drain();
        }
        if let Some(n) = self.next.as_mut() {
            n.drain();
        }
    }

    /// Takes in everything waiting when the block at `start` would
    /// otherwise miss music that has already arrived (a take served whole
    /// from the cache, played far from its start).
    pub fn catch_up(&mut self, start: i64, len: usize) {
        if let Some(c) = self.current.as_mut() {
            c.drain_until_ready(start, len);
        }
    }

    /// Schedules the waiting take to come in at `bar`, the next bar line at
    /// or after the block being played, once its music there has arrived.
    /// After a jump back (a loop, a seek) the switch moves to the nearer bar,
    /// so a host looping before the planned bar still hears the new take.
    pub fn schedule(&mut self, bar: i64) {
        let Some(n) = self.next.as_ref() else {
            return;
        };
        let sooner = self.switch_at.is_none_or(|at| bar < at);
        if sooner && bar < n.take.total_frames as i64 && n.ready(bar, self.xfade as usize) {
            self.switch_at = Some(bar);
        }
    }

    /// True when every frame of `[start, start + len)` inside the current
    /// piece has arrived (or there is no piece).
    pub fn ready(&self, start: i64, len: usize) -> bool {
        self.current.as_ref().is_none_or(|c| c.ready(start, len))
    }

    /// Offline rendering only: waits, at most `limit`, until the music of
    /// `[start, start + len)` has arrived. A preview gives way at once to
    /// the full piece (a bounce is never made of a preview).
    pub fn wait_ready_offline(&mut self, start: i64, len: usize, limit: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            self.poll();
            let on_preview = self.current.as_ref().is_some_and(|c| c.take.preview);
            if on_preview && self.next.as_ref().is_some_and(|n| n.ready(start, len)) {
                // No crossfade: the bounce is of the full piece alone.
                self.promote();
                continue;
            }
            if !on_preview && self.ready(start, len) {
                return true;
            }
            if self
                .current
                .as_ref()
                .is_some_and(|c| c.cannot_fill(start, len))
            {
                // Superseded while it was being made (a newer request
                // cancelled it): its music will never come, so the newer
                // take, if there is one, plays from here.
                if self.next.is_some() {
                    self.promote();
                    continue;
                }
                return false;
            }
            if self.stalled || t0.elapsed() >= limit {
                self.stalled = true;
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bounces only: waits, at most `limit`, for a take answering ask
    /// `ask` and for its music at `bar` (the next bar line, where it comes
    /// in), then schedules it there; a bounce then has the new music from
    /// the first bar it can, whatever the speed of the engine. Returns early
    /// when `answered()` says the ask was handled without a take (no video,
    /// an engine error). True when the take is in place.
    pub fn wait_for_take(
        &mut self,
        ask: u64,
        bar: i64,
        limit: Duration,
        answered: impl Fn() -> bool,
    ) -> bool {
        let t0 = Instant::now();
        loop {
            // Every take the ring holds, not one a call (the answer may be
            // behind a take that it overtakes), and at least one poll for
            // the chunks.
            let done = answered();
            loop {
                self.poll();
                if self.incoming.is_empty() || self.parked.iter().all(Option::is_some) {
                    break;
                }
            }
            let newest = self.next.as_ref().or(self.current.as_ref());
            if newest.is_some_and(|l| l.take.answers >= ask) {
                match self.next.as_ref() {
                    // Nothing to switch from: it plays as the current take.
                    None => return true,
                    Some(n) if bar >= n.take.total_frames as i64 => return true,
                    Some(n) if n.ready(bar, self.xfade as usize) => {
                        self.schedule(bar);
                        return true;
                    }
                    // Cancelled before its music at the bar was made.
                    Some(n) if n.cannot_fill(bar, self.xfade as usize) => return false,
                    Some(_) => {}
                }
            } else if done && self.incoming.is_empty() {
                return false;
            }
            if self.stalled || t0.elapsed() >= limit {
                self.stalled = true;
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Adds the music from frame `start` on, times `gain`, into `left` and
    /// `right`; crossfades to the waiting take where it is scheduled.
    pub fn mix_into(&mut self, start: i64, gain: f32, left: &mut [f32], right: &mut [f32]) {
        let end = start + left.len() as i64;
        match (self.current.as_ref(), self.next.as_ref(), self.switch_at) {
            (Some(c), Some(n), Some(at)) => {
                let len = self.xfade;
                c.mix(start, gain, Fade::Out { at, len }, left, right);
                n.mix(start, gain, Fade::In { at, len }, left, right);
                if end >= at + len {
                    self.promote();
                }
            }
            (Some(c), _, _) => c.mix(start, gain, Fade::Full, left, right),
            _ => {}
        }
    }

    /// The waiting take becomes the current one.
    fn promote(&mut self) {
        if let Some(next) = self.next.take()
            && let Some(old) = self.current.replace(next)
        {
            let (take, table) = old.unload();
            self.give_back(take);
            self.store_table(table);
        }
        self.switch_at = None;
    }

    pub fn has_take(&self) -> bool {
        self.current.is_some()
    }

    /// The tempo and time signature of the newest take (waiting or
    /// playing).
    pub fn newest_grid(&self) -> Option<Grid> {
        self.next
            .as_ref()
            .or(self.current.as_ref())
            .and_then(|l| l.take.grid)
    }

    /// Piece frame where the crossfade to the waiting take starts.
    pub fn switch_at(&self) -> Option<i64> {
        self.switch_at
    }
}

/// Hands a chunk back for freeing on the engine thread. The return ring has
/// a slot for every chunk of its take, so it cannot be full; should it be,
/// the chunk is leaked rather than freed here.
fn retire(reader: &mut ChunkReader, chunk: Arc<AudioChunk>) {
    if let Err(c) = reader.retire(chunk) {
        std::mem::forget(c);
    }
}

#[cfg(test)]
mod tests {
    //! The player alone, on takes whose chunks come from the engine's
    //! service as a cached piece does (the host tests play it through the
    //! whole plugin).

    use vidmusician_engine::audio::Audio;
    use vidmusician_engine::service::{
        AudioCache, CacheMeta, Engine, EngineChoice, EngineConfig, Request,
    };

    use super::*;

    const RATE: u32 = 48_000;
    const CHUNK: usize = 4096;
    const XFADE: usize = 64;

    /// A piece of `frames` frames, `f(channel, frame)`.
    fn piece(frames: usize, f: impl Fn(usize, usize) -> f32) -> Audio {
        Audio {
            sample_rate: RATE,
            channels: (0..2)
                .map(|c| (0..frames).map(|i| f(c, i)).collect())
                .collect(),
        }
    }

    /// Holds what keeps a take's chunks alive: the engine that frees them.
    struct Source {
        _dir: tempfile::TempDir,
        engine: Engine,
    }

    impl Source {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            // The text engine's requests resolve without a video; its tiny
            // model is only fingerprinted, never run.
            let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../engine/tests/fixtures/musicgen-tiny");
            let engine = Engine::start(EngineConfig {
                cache_dir: Some(dir.path().to_path_buf()),
                model_dir: Some(model),
                ..EngineConfig::default()
            })
            .unwrap();
            Self { _dir: dir, engine }
        }

        /// A take of `audio`, its chunks already in its reader, as the
        /// service serves a cached piece.
        fn take(&self, audio: &Audio, seed: u64, preview: bool) -> Box<Take> {
            let mut req = Request::text("", audio.duration());
            req.engine = EngineChoice::Text;
            req.sample_rate = RATE;
            req.seed = seed;
            req.chunk_frames = CHUNK;
            let key = self.engine.resolve(&req).unwrap().spec.key();
            let meta = CacheMeta {
                engine: "text".into(),
                bpm: None,
                downbeat: None,
                device: None,
            };
            AudioCache::new(self._dir.path())
                .put(&key, audio, &meta)
                .unwrap();
            let (_, reader) = self.engine.submit_cached(&req).unwrap();
            Box::new(Take {
                reader,
                chunk_frames: CHUNK,
                total_frames: audio.len() as u64,
                grid: None,
                preview,
                answers: seed,
            })
        }
    }

    struct Rig {
        player: Player,
        takes: rtrb::Producer<Box<Take>>,
        returned: rtrb::Consumer<Box<Take>>,
    }

    fn rig() -> Rig {
        let (takes, incoming) = rtrb::RingBuffer::new(4);
        let (outgoing, returned) = rtrb::RingBuffer::new(8);
        Rig {
            player: Player::new(incoming, outgoing, XFADE),
            takes,
            returned,
        }
    }

    /// The player's output for `[start, start + len)` at gain `gain`.
    fn play(p: &mut Player, start: i64, len: usize, gain: f32) -> (Vec<f32>, Vec<f32>) {
        let (mut l, mut r) = (vec![0.0; len], vec![0.0; len]);
        p.poll();
        p.catch_up(start, len);
        p.mix_into(start, gain, &mut l, &mut r);
        (l, r)
    }

    #[test]
    fn a_take_plays_as_a_function_of_the_position() {
        let src = Source::new();
        let audio = piece(20_000, |c, i| {
            (i as f32 + 0.5) / 20_000.0 * if c == 0 { 1.0 } else { -1.0 }
        });
        let mut rig = rig();
        // Nothing to play yet: silence, and nothing to wait for.
        assert!(rig.player.ready(0, 512));
        assert_eq!(play(&mut rig.player, 0, 64, 1.0).0, vec![0.0; 64]);
        rig.takes.push(src.take(&audio, 1, false)).unwrap();
        // Before the piece, across chunk boundaries, across its end, past it;
        // in any order (a seek, a loop).
        for start in [-100i64, 5_000, 0, 8_000, 19_990, 30_000, 4_000] {
            let (l, r) = play(&mut rig.player, start, 700, 0.5);
            for i in 0..700 {
                let f = start + i as i64;
                let want = |c: usize| {
                    usize::try_from(f)
                        .ok()
                        .and_then(|f| audio.channels[c].get(f))
                        .map_or(0.0, |v| 0.5 * v)
                };
                assert_eq!((l[i], r[i]), (want(0), want(1)), "frame {f}");
            }
        }
        assert!(rig.player.has_take());
        assert!(rig.player.ready(0, 20_000));
    }

    #[test]
    fn a_new_take_comes_in_at_the_bar_with_a_crossfade() {
        let src = Source::new();
        let old = piece(30_000, |_, _| 1.0);
        let new = piece(30_000, |_, _| -1.0);
        let mut rig = rig();
        rig.takes.push(src.take(&old, 1, false)).unwrap();
        play(&mut rig.player, 0, 512, 1.0);
        rig.takes.push(src.take(&new, 2, false)).unwrap();
        rig.player.poll();
        // Its music at the bar has arrived: it is scheduled there.
        rig.player.schedule(10_000);
        assert_eq!(rig.player.switch_at(), Some(10_000));
        // A later bar does not move it; a jump back to an earlier one does.
        rig.player.schedule(12_000);
        assert_eq!(rig.player.switch_at(), Some(10_000));
        rig.player.schedule(9_000);
        assert_eq!(rig.player.switch_at(), Some(9_000));
        let (l, _) = play(&mut rig.player, 8_900, 300, 1.0);
        for (i, &x) in l.iter().enumerate() {
            let f = 8_900 + i as i64;
            let t = ((f - 9_000) as f32 / XFADE as f32).clamp(0.0, 1.0);
            let want = (1.0 - t) - t;
            assert!((x - want).abs() < 1e-6, "frame {f}: {x} ≠ {want}");
        }
        // The old take went back to be freed off the audio thread; the new
        // one plays alone, also before the bar.
        assert!(rig.returned.pop().is_ok());
        assert_eq!(rig.player.switch_at(), None);
        assert_eq!(play(&mut rig.player, 0, 64, 1.0).0, vec![-1.0; 64]);
    }

    #[test]
    fn a_bounce_plays_the_full_piece_not_its_preview() {
        let src = Source::new();
        let preview = piece(8_000, |_, _| 0.25);
        let full = piece(30_000, |_, _| 0.75);
        let mut rig = rig();
        rig.takes.push(src.take(&preview, 1, true)).unwrap();
        rig.takes.push(src.take(&full, 2, false)).unwrap();
        rig.player.poll();
        rig.player.poll();
        assert!(
            rig.player
                .wait_ready_offline(1_000, 512, Duration::from_secs(5))
        );
        // No crossfade from the preview: the full piece at once.
        assert_eq!(play(&mut rig.player, 1_000, 512, 1.0).0, vec![0.75; 512]);
        assert!(rig.returned.pop().is_ok());
    }

    #[test]
    fn a_newer_take_overtakes_one_waiting_for_its_bar() {
        let src = Source::new();
        let mut rig = rig();
        let grid = |bpm| Grid {
            bpm,
            meter: Meter::COMMON,
        };
        for (seed, bpm) in [(1, 100.0), (2, 110.0), (3, 120.0)] {
            let mut t = src.take(&piece(20_000, |_, _| seed as f32), seed, false);
            t.grid = Some(grid(bpm));
            rig.takes.push(t).unwrap();
            rig.player.poll();
        }
        // The second never played: it went back when the third came.
        let back = rig.returned.pop().unwrap();
        assert_eq!(back.answers, 2);
        assert_eq!(rig.player.newest_grid(), Some(grid(120.0)));
        // The first still plays until the third's bar.
        assert_eq!(play(&mut rig.player, 0, 32, 1.0).0, vec![1.0; 32]);
        rig.player.schedule(4_096);
        play(&mut rig.player, 4_000, 512, 1.0);
        assert_eq!(play(&mut rig.player, 5_000, 32, 1.0).0, vec![3.0; 32]);
    }
}
