//! Blocking work (file I/O, fsync, compression, flock waits) called from async code goes
//! through here, and only here, so that it never stalls a runtime worker:
//!
//! - [`unblock`]: the work owns its data (`'static`): it runs on tokio's blocking pool. The
//!   pool starts it at once, so several can run side by side before the first is awaited
//!   (a pull's ingest, inflate and unpack stages). A panic in it resumes on the awaiting task,
//!   as if the work had run there.
//! - [`in_place`]: the work borrows from the caller (a RUN's mount preparation, which may wait
//!   on a cache mount's flock): on a multi-threaded runtime the worker hands its other tasks
//!   to another worker meanwhile; elsewhere (no runtime, or a current-thread one in tests) it
//!   just runs.
//!
//! Code outside async functions calls blocking functions directly.

use std::future::Future;

/// Runs `f` on the blocking pool; the returned future yields its result.
pub fn unblock<T, F>(f: F) -> impl Future<Output = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let handle = tokio::task::spawn_blocking(f);
    async move {
        match handle.await {
            Ok(v) => v,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Blocking tasks are never aborted; only a runtime shutting down cancels them,
                // and then nothing awaits this future any more.
                Err(e) => panic!("blocking task cancelled: {e}"),
            },
        }
    }
}

/// Runs `f`, which borrows from the caller, on this thread, telling a multi-threaded runtime
/// to move this worker's other tasks elsewhere meanwhile.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn unblock_starts_at_once_and_runs_side_by_side() {
        // Two tasks that each wait for the other: they finish only if both run before
        // either is awaited, on threads other than the single worker.
        let (tx_a, rx_a) = std::sync::mpsc::channel();
        let (tx_b, rx_b) = std::sync::mpsc::channel();
        let a = unblock(move || {
            tx_a.send(()).expect("send");
            rx_b.recv().expect("b ran")
        });
        let b = unblock(move || {
            tx_b.send(()).expect("send");
            rx_a.recv().expect("a ran")
        });
        b.await;
        a.await;
    }

    #[tokio::test]
    async fn a_panic_in_unblocked_work_resumes_in_the_caller() {
        let caught = tokio::spawn(unblock(|| panic!("inside")))
            .await
            .expect_err("the panic came through");
        let payload = caught.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside"));
    }

    #[test]
    fn in_place_runs_borrowed_work_with_or_without_a_runtime() {
        let mut n = 0;
        in_place(|| n += 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        rt.block_on(async { in_place(|| n += 1) });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async { in_place(|| n += 1) });
        assert_eq!(n, 3);
    }
}
