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
