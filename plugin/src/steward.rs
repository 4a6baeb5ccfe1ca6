//! The steward: a plugin-owned thread that does the main thread's routine
//! work when the host gives the main thread no turn.
//!
//! CLAP hosts answer `request_callback` with `on_main_thread`, but not all
//! do: on Linux, VST3 through clap-wrapper delivers no main-thread callbacks
//! (nor timers) unless the editor is open, and a host busy with an offline
//! render may not either. Without this thread a tempo change or a moved
//! parameter would ask for new music that is never made, and the takes the
//! audio thread lets go of would pile up until it refused new ones.
//!
//! Every few milliseconds the steward drops returned takes and picks up the
//! engine's events; when new music has been asked for and the host's main
//! thread has not answered within a tick (at once while the host renders),
//! it makes the request itself. It never calls a host function that is for
//! the main thread only: REAPER's timeline is read on the host's main
//! thread alone, and the log it may write to is thread-safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use clack_extensions::params::HostParams;
use parking_lot::Mutex;

use crate::Shared;
use crate::requests::{Inner, answer, tidy};

/// How often the steward looks.
const TICK: Duration = Duration::from_millis(10);

/// The plugin's [`Shared`], lent to the steward's thread.
struct SharedPtr(*const Shared<'static>);

// SAFETY: `Shared` is `Sync` (CLAP's thread-safe part of the plugin), and
// the pointer is only dereferenced while the plugin instance lives: see
// `Steward::start`.
unsafe impl Send for SharedPtr {}

pub(crate) struct Steward {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Steward {
    /// Starts the thread. `shared` must outlive the returned steward, which
    /// joins the thread when dropped: the plugin's `MainThread` owns it and
    /// drops it in its own `Drop`, and clack drops the main-thread part
    /// before the (boxed, pinned) shared part.
    pub(crate) fn start(shared: &Shared<'_>, inner: Arc<Mutex<Inner>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ptr = SharedPtr((shared as *const Shared<'_>).cast::<Shared<'static>>());
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vidmusician-stw".into())
            .spawn(move || {
                let ptr = ptr;
                // SAFETY: the thread is joined before `shared` is dropped
                // (see above), so the reference is valid for its whole life.
                let shared: &Shared<'_> = unsafe { &*ptr.0 };
                run(shared, &inner, &flag);
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Steward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared<'_>, inner: &Mutex<Inner>, stop: &AtomicBool) {
    // Whether an ask was waiting at the last tick: the host's main thread
    // gets one tick to answer it first.
    let mut waiting = false;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(TICK);
        let asked = shared.regenerate.load(Ordering::Acquire);
        // The host's main thread may hold the lock (a request of its own):
        // then this round is its, not ours.
        let Some(mut inner) = inner.try_lock() else {
            continue;
        };
        tidy(shared, &mut inner);
        // The editor moved a parameter while the host is not processing:
        // a flush applies it and tells the host.
        if shared.editor.edits_pending.load(Ordering::Acquire)
            && let Some(params) = shared.host.get_extension::<HostParams>()
        {
            params.request_flush(&shared.host);
        }
        if asked && (waiting || shared.bouncing()) {
            answer(shared, &mut inner);
        }
        waiting = shared.regenerate.load(Ordering::Acquire);
    }
}
