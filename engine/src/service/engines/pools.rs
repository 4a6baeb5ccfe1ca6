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
    exited: Arc<std::sync::atomic::AtomicUsize>,
    /// rayon's threads, started here so that they can be joined.
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Pools {
    pub fn new() -> Self {
        let exited = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = exited.clone();
        let mut handles = Vec::new();
        let rayon = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("vidmusician-par-{i}"))
            .exit_handler(move |_| {
                count.fetch_add(1, Ordering::AcqRel);
            })
            .spawn_handler(|thread| {
                let mut b = std::thread::Builder::new();
                if let Some(name) = thread.name() {
                    b = b.name(name.to_string());
                }
                if let Some(size) = thread.stack_size() {
                    b = b.stack_size(size);
                }
                handles.push(b.spawn(move || thread.run())?);
                Ok(())
            })
            .build()
            .ok();
        Self {
            step: Arc::new(Pool::sized_like_global()),
            rayon,
            exited,
            handles,
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
        // so a stuck thread cannot hang a host's unload), then join them, so
        // that none still runs this library's code once the engine is gone
        // (a host may unload it at once).
        drop(self.rayon.take());
        let t0 = std::time::Instant::now();
        let threads = self.handles.len();
        while self.exited.load(Ordering::Acquire) < threads
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.exited.load(Ordering::Acquire) >= threads {
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}
