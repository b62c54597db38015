//! Starting sandboxes from one long-lived thread.
//!
//! A RUN sandbox must die with the build: its `__init` gets `PR_SET_PDEATHSIG` (see
//! [`executor::sys::kill_with_spawner`]), and its pid 1 gets the same from `__init`, whose
//! death takes the whole pid namespace with it. But the kernel sends that signal when the
//! parent *thread* exits, and a tokio worker that went through `block_in_place` (as a step
//! waiting on a locked cache mount does) may retire after ten idle seconds while the step
//! still runs. So every sandbox is forked by this module's thread, which is started once and
//! never exits before the process does.

use std::sync::{Mutex, OnceLock, mpsc};

type Reply = tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>;

struct Request {
    cmd: tokio::process::Command,
    runtime: tokio::runtime::Handle,
    reply: Reply,
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("kiln-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    // tokio's child reaping needs the runtime that will wait for it.
                    let _entered = req.runtime.enter();
                    let _ = req.reply.send(req.cmd.spawn());
                }
            });
        if let Err(e) = thread {
            tracing::warn!(error = %e, "no spawner thread: sandboxes start from the worker");
        }
        Mutex::new(tx)
    })
}

/// Spawns `cmd` (already set up with [`executor::sys::kill_with_spawner`]) from the spawner
/// thread, on the current tokio runtime.
///
/// Fails as `Command::spawn` does.
pub async fn spawn(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let sent = spawner()
        .lock()
        .expect("the spawner sender is never poisoned: send does not panic")
        .send(Request {
            cmd,
            runtime,
            reply,
        });
    match sent {
        Ok(()) => match rx.await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::other("the spawner thread is gone")),
        },
        // No spawner thread: spawn here (the death signal is then tied to this worker).
        Err(mpsc::SendError(req)) => {
            cmd = req.cmd;
            cmd.spawn()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `child` is still running after up to a second (the parent-death signal is
    /// sent while the dying thread exits, which can be just after `join` returns).
    fn survives(child: &mut tokio::process::Child) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    fn sleeper() -> tokio::process::Command {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        executor::sys::kill_with_spawner(&mut cmd);
        tokio::process::Command::from(cmd)
    }

    #[test]
    fn a_sandbox_outlives_the_worker_thread_that_asked_for_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let handle = rt.handle().clone();
        // A thread that asks for the child and exits, as a retired tokio thread would.
        let mut child = std::thread::spawn(move || handle.block_on(spawn(sleeper())))
            .join()
            .expect("thread")
            .expect("spawn");
        assert!(
            survives(&mut child),
            "killed with the thread that asked for it"
        );
        let _ = child.start_kill();

        // The same child spawned by the exiting thread itself dies with it: the signal
        // follows the parent thread, which is why `spawn` exists.
        let handle = rt.handle().clone();
        let mut child = std::thread::spawn(move || {
            let _entered = handle.enter();
            sleeper().spawn()
        })
        .join()
        .expect("thread")
        .expect("spawn");
        assert!(!survives(&mut child), "PR_SET_PDEATHSIG was not set");
    }
}
