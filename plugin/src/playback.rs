//! The audio thread's player: places the engine's chunks in a preallocated
//! table and copies from it as a pure function of the song position. Never
//! allocates, frees, locks or blocks (except the bounded wait of offline
//! rendering); chunks it lets go of go back through the engine's return
//! ring, takes it lets go of go back to the main thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmusician_engine::service::{AudioChunk, ChunkReader};

/// Chunk slots preallocated per instance. With the plugin's chunk size
/// chosen as `total / MAX_SLOTS` (at least 4096 frames), any length fits.
pub const MAX_SLOTS: usize = 8192;

/// One generated piece on its way to the audio thread.
pub struct Take {
    pub request: u64,
    pub reader: ChunkReader,
    pub chunk_frames: usize,
    /// Length of the piece, frames at the host's rate.
    pub total_frames: u64,
}

pub struct Player {
    slots: Vec<Option<Arc<AudioChunk>>>,
    take: Option<Box<Take>>,
    /// New takes from the main thread.
    incoming: rtrb::Consumer<Box<Take>>,
    /// Finished takes back to the main thread, to be dropped there.
    outgoing: rtrb::Producer<Box<Take>>,
    /// A finished take the main thread has not had room for yet.
    parked: Option<Box<Take>>,
}

impl Player {
    /// Allocates everything the audio thread will ever use.
    pub fn new(incoming: rtrb::Consumer<Box<Take>>, outgoing: rtrb::Producer<Box<Take>>) -> Self {
        let mut slots = Vec::with_capacity(MAX_SLOTS);
        slots.resize_with(MAX_SLOTS, || None);
        Self {
            slots,
            take: None,
            incoming,
            outgoing,
            parked: None,
        }
    }

    /// Takes in whatever arrived: a new take replaces the current one, ready
    /// chunks go into their slots.
    pub fn poll(&mut self) {
        if let Some(p) = self.parked.take()
            && let Err(rtrb::PushError::Full(p)) = self.outgoing.push(p)
        {
            self.parked = Some(p);
        }
        // A new take only when the previous one could be handed back.
        if self.parked.is_none()
            && let Ok(new) = self.incoming.pop()
        {
            if let Some(mut old) = self.take.take() {
                for slot in self.slots.iter_mut() {
                    if let Some(c) = slot.take() {
                        retire(&mut old.reader, c);
                    }
                }
                if let Err(rtrb::PushError::Full(old)) = self.outgoing.push(old) {
                    self.parked = Some(old);
                }
            }
            self.take = Some(new);
        }
        let Some(take) = self.take.as_mut() else {
            return;
        };
        while let Some(chunk) = take.reader.pop() {
            let idx = (chunk.start / take.chunk_frames as u64) as usize;
            match self.slots.get_mut(idx) {
                Some(slot) => {
                    if let Some(old) = slot.replace(chunk) {
                        retire(&mut take.reader, old);
                    }
                }
                None => retire(&mut take.reader, chunk),
            }
        }
    }

    /// True when every frame of `[start, start + len)` that lies inside the
    /// piece has arrived (or there is no piece).
    pub fn ready(&self, start: i64, len: usize) -> bool {
        let Some(take) = self.take.as_ref() else {
            return true;
        };
        let total = take.total_frames as i64;
        let a = start.max(0);
        let b = (start + len as i64).min(total);
        if a >= b {
            return true;
        }
        let cf = take.chunk_frames as i64;
        (a / cf..=(b - 1) / cf).all(|i| self.slots.get(i as usize).is_some_and(Option::is_some))
    }

    /// Waits, at most `limit`, until [`Self::ready`]: offline rendering only.
    pub fn wait_ready(&mut self, start: i64, len: usize, limit: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            self.poll();
            if self.ready(start, len) {
                return true;
            }
            if t0.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Adds the music from frame `start` on, times `gain`, into `left` and
    /// `right` (silence where nothing has arrived or outside the piece).
    pub fn mix_into(&self, start: i64, gain: f32, left: &mut [f32], right: &mut [f32]) {
        let Some(take) = self.take.as_ref() else {
            return;
        };
        let cf = take.chunk_frames as i64;
        let total = take.total_frames as i64;
        let n = left.len().min(right.len());
        let mut i = 0usize;
        while i < n {
            let f = start + i as i64;
            if f < 0 {
                // Jump to the first frame of the piece.
                i = (-start).min(n as i64) as usize;
                continue;
            }
            if f >= total {
                break;
            }
            let idx = (f / cf) as usize;
            let within = (f % cf) as usize;
            let run = (cf as usize - within).min(n - i).min((total - f) as usize);
            if let Some(Some(chunk)) = self.slots.get(idx) {
                let run = run.min(chunk.frames().saturating_sub(within));
                for k in 0..run {
                    left[i + k] += chunk.left[within + k] * gain;
                    right[i + k] += chunk.right[within + k] * gain;
                }
                i += run.max(1);
            } else {
                i += run;
            }
        }
    }

    pub fn has_take(&self) -> bool {
        self.take.is_some()
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
