//! Work that may block, kept off the main loop. The main loop feeds the systemd watchdog and
//! serves the RTSP clients; opening a camera, syncing to an SD card or tearing down a TCP
//! connection to a stalled server can each take seconds, so they run on a thread of their own
//! and hand their result back.

/// Runs `work` on a new thread named `name`, then `then` with its result on the main loop.
/// Called on the main-loop thread.
pub fn offload<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(T) + 'static,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    detached(name, move || {
        let _ = tx.send(work());
    });
    glib::MainContext::default().spawn_local(async move {
        if let Ok(v) = rx.await {
            then(v);
        }
    });
}

/// Runs `work` on a new thread named `name` and forgets it. If the thread cannot be made,
/// `work` runs on the caller's thread instead: late is better than never.
pub fn detached(name: &str, work: impl FnOnce() + Send + 'static) {
    // Shared so that it can still be run here if the thread is refused.
    let work = std::sync::Arc::new(std::sync::Mutex::new(Some(work)));
    let w = work.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Some(work) = w.lock().ok().and_then(|mut w| w.take()) {
                work();
            }
        });
    if spawned.is_err() {
        log::warn!("cannot start a thread for {name}; running it here");
        if let Some(work) = work.lock().ok().and_then(|mut w| w.take()) {
            work();
        }
    }
}
