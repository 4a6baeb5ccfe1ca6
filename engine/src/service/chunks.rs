//! Audio handed to a real-time consumer.

use std::sync::Arc;

/// A piece of the generated music: `frames` stereo frames starting at frame
/// `start` of the piece (at the request's sample rate).
#[derive(Debug)]
pub struct AudioChunk {
    pub request: u64,
    pub start: u64,
    pub left: Box<[f32]>,
    pub right: Box<[f32]>,
}

impl AudioChunk {
    pub fn frames(&self) -> usize {
        self.left.len()
    }

    /// Frames `[start, start + n)` of `audio` (fewer at the end); mono is
    /// doubled to stereo.
    pub(crate) fn cut(
        request: u64,
        audio: &crate::audio::Audio,
        start: usize,
        n: usize,
    ) -> Arc<Self> {
        let end = (start + n).min(audio.len());
        let ch = |c: usize| {
            audio.channels[c.min(audio.channels.len() - 1)][start..end]
                .to_vec()
                .into_boxed_slice()
        };
        Arc::new(Self {
            request,
            start: start as u64,
            left: ch(0),
            right: ch(1),
        })
    }
}

/// The consuming end of a request's chunk ring. `pop` and `retire` never
/// allocate, free, lock or block, so a real-time thread may call them.
pub struct ChunkReader {
    chunks: rtrb::Consumer<Arc<AudioChunk>>,
    retired: rtrb::Producer<Arc<AudioChunk>>,
}

impl ChunkReader {
    pub(super) fn new(
        chunks: rtrb::Consumer<Arc<AudioChunk>>,
        retired: rtrb::Producer<Arc<AudioChunk>>,
    ) -> Self {
        Self { chunks, retired }
    }

    /// The next chunk, if one is ready.
    pub fn pop(&mut self) -> Option<Arc<AudioChunk>> {
        self.chunks.pop().ok()
    }

    /// Hands a chunk back to be freed on the engine thread. Gives it back
    /// when the return ring is full (the caller keeps it and retries later).
    pub fn retire(&mut self, chunk: Arc<AudioChunk>) -> Result<(), Arc<AudioChunk>> {
        self.retired
            .push(chunk)
            .map_err(|rtrb::PushError::Full(c)| c)
    }

    /// Chunks waiting to be popped.
    pub fn ready(&self) -> usize {
        self.chunks.slots()
    }

    /// True when no chunk will come any more: the request has ended
    /// (finished, failed or cancelled) and every chunk it sent was popped.
    /// Allocation- and lock-free.
    pub fn is_finished(&self) -> bool {
        // Abandoned first: once it is, nothing more is pushed, so an empty
        // ring stays empty.
        self.chunks.is_abandoned() && self.chunks.is_empty()
    }
}
