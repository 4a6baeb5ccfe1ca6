//! Opening and closing the editor 50 times, as a host does, leaks nothing
//! of ours: the threads end, the heap and RSS stay within what baseview
//! keeps per window (see below). A test binary of its own, so that its
//! allocator setting comes before any thread and no other test's memory is
//! counted.

mod common;

use std::sync::Arc;

use clack_host::prelude::*;
use common::xvfb::*;
use common::*;

#[global_allocator]
static ALLOCATOR: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Bytes the allocator has handed out and not had back.
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let mi = unsafe { libc::mallinfo2() };
    mi.uordblks + mi.hblkhd
}

/// Waits for the threads a closed editor leaves to end (Mesa's rasteriser
/// and cache threads end shortly after the window's own), then gives the
/// allocator's free pages back, so that RSS counts what is still held.
fn settle(idle_threads: usize) -> bool {
    let settled = wait_for(20, || threads() <= idle_threads);
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe { libc::malloc_trim(0) };
    settled
}

#[test]
fn opening_and_closing_fifty_times_leaks_nothing() {
    // Each window's thread and Mesa's would otherwise get glibc arenas of
    // their own, as many as the timing of the threads makes (up to 8 a
    // core), each keeping pages: RSS would measure that spread, not what
    // is held. Two arenas in this process, set before any thread starts
    // (hence a test binary of its own).
    // SAFETY: mallopt only changes the allocator's policy for new arenas.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let d = display();
    let mut inst = instance();
    let model = newest_model();
    let parent = d.host_window(0, 0, 800, 500);
    let idle = threads();
    let cycle = |inst: &mut PluginInstance<TestHost>| {
        let before = model.drawn.snapshot().frames;
        open_editor(inst, parent, (800, 500));
        assert!(
            wait_for(20, || model.drawn.snapshot().frames > before),
            "the editor did not draw"
        );
        close_editor(inst);
        assert!(!model.is_open());
    };
    // The first windows load OpenGL, Mesa and the fonts for good; the
    // count starts after them.
    for _ in 0..10 {
        cycle(&mut inst);
    }
    assert!(
        settle(idle),
        "threads: {} after closing, {idle} before",
        threads()
    );
    let (rss0, heap0) = (rss_kib(), heap_in_use());

    let n = 50;
    for _ in 0..n {
        cycle(&mut inst);
    }
    assert!(
        settle(idle),
        "threads: {} after {n} editors, {idle} before",
        threads()
    );

    let (rss, heap) = (rss_kib(), heap_in_use());
    eprintln!(
        "{n} editors: heap {:+} KiB, RSS {:+} KiB",
        (heap as i64 - heap0 as i64) / 1024,
        rss as i64 - rss0 as i64
    );
    // baseview 0.4.2 keeps one reference too many to the keyboard map it
    // reads for each window (`XkbcommonState::new` never releases the
    // keymap it made), about 75 KB an editor here, found with heaptrack:
    // every allocation still held after the editors close was made in its
    // `EventLoop::new`. Anything of ours held per editor (a model, the
    // thumbnails' textures, an egui context with its font atlas, a
    // window's thread) is more than the 25 KB over that allowed here.
    let per_editor = heap.saturating_sub(heap0) / n;
    assert!(
        per_editor < 100 * 1024,
        "the heap grew by {} KiB over {n} editors",
        heap.saturating_sub(heap0) / 1024
    );
    // What the process holds, free pages given back: the keymaps above,
    // and the pages they pin. The bound catches what a leak of a window's
    // buffers (1.6 MB at this size) or of an egui context would add.
    assert!(
        rss < rss0 + n as u64 * 300,
        "memory grew by {} KiB over {n} editors",
        rss.saturating_sub(rss0)
    );
    assert_eq!(Arc::strong_count(&model), 2, "an editor kept its model");
    d.destroy_window(parent);
}
