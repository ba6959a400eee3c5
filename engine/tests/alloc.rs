//! The engine's own memory over many sleep/wake cycles (fake runtime, no root): what it
//! keeps allocated must not grow once warmed up. A shim sleeps and wakes its container
//! all night; a few bytes kept per cycle would add up.

mod fake;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lightwhale_engine::{State, Trigger};

/// Counts the bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

async fn cycle(r: &fake::Rig, trigger: Trigger) {
    r.c.sleep().await.expect("sleep");
    r.c.wake(trigger).await.expect("wake");
    assert_eq!(r.c.state(), State::Awake);
    // The recording sink would keep them: let them go, as the shim's publisher does.
    drop(r.sink.take());
    r.fake.forget_calls();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_engine_keeps_does_not_grow_with_cycles() {
    let r = fake::rig().await;
    // Warm-up: maps and queues reach their working size.
    for _ in 0..50 {
        cycle(&r, Trigger::Request).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..300 {
        cycle(&r, Trigger::Request).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("live bytes after 300 more cycles: {grown:+}");
    assert!(
        grown < 16 * 1024,
        "the engine kept {grown} more bytes over 300 cycles"
    );
}
