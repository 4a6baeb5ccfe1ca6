//! A small thread pool for the decoder step's many short parallel loops.
//!
//! A decoder step runs ~150 matrix products and attentions of 0.05–1 ms each. Handing
//! each to rayon costs ~17 µs of wake-up and stealing, a tenth of a real-time step;
//! here the workers spin on an epoch counter between jobs (a few hundred ns to start
//! one) and go to sleep only after [`SPIN`] without work, so an idle engine burns no
//! CPU. One job runs at a time: a caller that finds the pool busy (two generations at
//! once) runs its parts itself, in order, with the same results.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long a worker spins waiting for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers compare it with the last one they ran.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job; written only while no worker runs one (`pending` is 0).
    job: UnsafeCell<Option<Job>>,
    stop: AtomicBool,
    sleeping: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `job` is written by the one caller holding `Pool::busy` while every worker
// is idle, and read by workers only after the epoch's release/acquire hand-over.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced during `run`.
unsafe impl Send for Shared {}

thread_local! {
    static SCOPED: std::cell::Cell<Option<Arc<Pool>>> = const { std::cell::Cell::new(None) };
}

pub struct Pool {
    shared: Arc<Shared>,
    busy: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool that runs jobs on the calling thread and `threads − 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            stop: AtomicBool::new(false),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .filter_map(|part| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("vidmusician-step-{part}"))
                    .spawn(move || worker(&shared, part))
                    .ok()
            })
            .collect();
        Self {
            shared,
            busy: Mutex::new(()),
            workers,
        }
    }

    /// The pool the decoder uses where no other is [scoped](Pool::scoped), with as
    /// many threads as rayon's (which honours `RAYON_NUM_THREADS`). Its workers
    /// live as long as the process.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
    }

    /// A pool sized like [`Pool::global`], to be owned (and so joined) by its user.
    pub fn sized_like_global() -> Self {
        Pool::new(rayon::current_num_threads())
    }

    /// Runs `f` with `pool` as the pool of this thread's neural work, instead of
    /// the global one: an engine thread owns its pool, so a plugin that is
    /// destroyed joins every thread it started.
    pub fn scoped<R>(pool: &Arc<Pool>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Pool>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                SCOPED.set(self.0.take());
            }
        }
        let _restore = Restore(SCOPED.replace(Some(Arc::clone(pool))));
        f()
    }

    /// Runs `f` on this thread's pool: the scoped one, else the global one.
    pub(crate) fn with_current<R>(f: impl FnOnce(&Pool) -> R) -> R {
        match SCOPED.with(|s| {
            let p = s.take();
            s.set(p.clone());
            p
        }) {
            Some(p) => f(&p),
            None => f(Pool::global()),
        }
    }

    /// How many parts [`Pool::run`] splits a job into.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(part)` for every part in `0..self.threads()`, in parallel when the
    /// pool is free, and returns when all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let parts = self.threads();
        let Some(_busy) = self.busy.try_lock() else {
            (0..parts).for_each(f);
            return;
        };
        if parts == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: no worker is running a job (the previous `run` waited for all of
        // them), so nothing reads `job` while it is written. The lifetime is erased
        // for the pointer's storage only: this call does not return until every
        // worker has finished with it (the guard waits even if `f` panics here).
        unsafe {
            let job: &'static (dyn Fn(usize) + Sync) = std::mem::transmute(f);
            *s.job.get() = Some(job as Job);
        }
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        if *s.sleeping.lock() > 0 {
            s.wake.notify_all();
        }
        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                while self.0.pending.load(Ordering::Acquire) != 0 {
                    std::hint::spin_loop();
                }
            }
        }
        let _wait = Wait(s);
        f(0);
    }
}

/// Splits `data` into one contiguous piece per thread of this thread's pool, cut at
/// multiples of `unit` (the last piece may end in a partial unit), and runs
/// `f(first_unit, piece)` on each piece in parallel.
pub fn for_each_piece<T: Send>(data: &mut [T], unit: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    Pool::with_current(|pool| pieces_on(pool, data, unit, f));
}

fn pieces_on<T: Send>(
    pool: &Pool,
    data: &mut [T],
    unit: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let units = data.len().div_ceil(unit.max(1));
    if units == 0 {
        return;
    }
    let per = units.div_ceil(pool.threads());
    let pieces: Vec<&mut [T]> = data.chunks_mut(per * unit.max(1)).collect();
    pool.run_parts(pieces, &|i, piece| f(i * per, piece));
}

impl Pool {
    /// Runs `f(i, &mut parts[i])` for every part on its own thread (at most
    /// [`Pool::threads`] parts; any beyond that are not run).
    pub fn run_parts<T: Send>(&self, parts: Vec<T>, f: &(dyn Fn(usize, &mut T) + Sync)) {
        debug_assert!(parts.len() <= self.threads());
        // Each part is taken by exactly one thread: the locks are never contended.
        let parts: Vec<Mutex<T>> = parts.into_iter().map(Mutex::new).collect();
        self.run(&|i| {
            if let Some(part) = parts.get(i) {
                f(i, &mut part.lock());
            }
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _sleeping = self.shared.sleeping.lock();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, part: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && started.elapsed() > SPIN {
                let mut sleeping = s.sleeping.lock();
                *sleeping += 1;
                // Checked under the lock `run` takes before notifying, so a job
                // posted meanwhile is not missed.
                while s.epoch.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                    s.wake.wait(&mut sleeping);
                }
                *sleeping -= 1;
            }
            std::hint::spin_loop();
        };
        seen = epoch;
        // SAFETY: `run` stored the job before bumping the epoch (release/acquire)
        // and keeps it alive until `pending` reaches 0 below.
        let job = unsafe { (*s.job.get()).map(|j| &*j) };
        if let Some(job) = job {
            // A panic in a part must not leave `run` waiting forever.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(part)));
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn pieces_cover_every_element_once_whatever_the_length() {
        for len in [0, 1, 5, 255, 256, 257, 600, 1000, 4096] {
            let mut v = vec![0u32; len];
            for_each_piece(&mut v, 256, &|first, piece| {
                for (i, x) in piece.iter_mut().enumerate() {
                    *x += (first * 256 + i) as u32 + 1;
                }
            });
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1),
                "len {len}"
            );
        }
    }

    #[test]
    fn every_part_runs_once_per_job() {
        let pool = Pool::new(3);
        let hits: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|p| {
                hits[p].fetch_add(1, Ordering::Relaxed);
            });
        }
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn jobs_after_the_workers_slept_still_run() {
        let pool = Pool::new(2);
        let n = AtomicU64::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 10);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_busy_pool_runs_a_second_callers_parts_on_that_caller() {
        let pool = Arc::new(Pool::new(2));
        let total = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.run(&|p| {
                            total.fetch_add(p as u64 + 1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3);
    }
}
