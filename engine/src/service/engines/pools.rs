//! The threads neural work runs on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::neural::pool::Pool;

/// The threads neural work runs on, owned by the engine thread rather than
/// global: candle's rayon work and the decoder's step pool. A plugin that is
/// destroyed so leaves no thread of its own running.
pub(crate) struct Pools {
    step: Arc<Pool>,
    rayon: Option<rayon::ThreadPool>,
    threads: usize,
    exited: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pools {
    pub fn new() -> Self {
        let exited = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = exited.clone();
        let rayon = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("vidmusician-par-{i}"))
            .exit_handler(move |_| {
                count.fetch_add(1, Ordering::AcqRel);
            })
            .build()
            .ok();
        Self {
            step: Arc::new(Pool::sized_like_global()),
            threads: rayon.as_ref().map_or(0, |r| r.current_num_threads()),
            rayon,
            exited,
        }
    }

    /// Runs `f` with both pools as this work's.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.rayon {
            Some(r) => r.install(|| Pool::scoped(&self.step, f)),
            None => Pool::scoped(&self.step, f),
        }
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        // rayon ends its threads without waiting for them: wait here (bounded,
        // so a stuck thread cannot hang a host's unload).
        drop(self.rayon.take());
        let t0 = std::time::Instant::now();
        while self.exited.load(Ordering::Acquire) < self.threads
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
