//! Mutating RPCs that a client cannot cut in half.
//!
//! tonic drops a handler's future when the client's deadline passes or it disconnects. A
//! RunPodSandbox dropped between reserving its name and recording the pod would leave the
//! name reserved and the namespaces, the lease and the mounts behind, invisible to List and
//! Remove. So every mutating RPC runs its body in a task of its own ([`detached`]), which
//! finishes (or fails and undoes itself, as every body does on its own errors) whatever the
//! client does.
//!
//! Creations ([`Creations`]) go further, as CRI-O's resource store does: kubelet retries a
//! RunPodSandbox or CreateContainer that timed out with the same name, and the retry is
//! answered with the original request's result (waiting for it if it is still running) rather
//! than AlreadyExists. A result whose client left and that no retry claims within
//! [`ABANDONED_GRACE`] is undone (the pod or container removed), as CRI-O does after its
//! `sleepTimeBeforeCleanup`: nothing on the node would ever learn its id.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tonic::Status;

use crate::error::DaemonError;

/// How long a creation whose client went away waits for a retry to claim it.
pub const ABANDONED_GRACE: Duration = Duration::from_secs(60);

/// Runs a request's body to completion in its own task, whatever happens to the caller.
pub async fn detached<T: Send + 'static>(
    body: impl Future<Output = Result<T, DaemonError>> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::spawn(body)
        .await
        .map_err(|err| DaemonError::Internal(format!("request task failed: {err}")))?
}

/// What a creation produced: the new object's id, or the error its client was (or would have
/// been) told.
pub type Created = Result<String, Status>;

enum Entry {
    /// The creation runs; its result will be sent here.
    Running(watch::Receiver<Option<Created>>),
    /// Created, and no caller has taken the id yet.
    Unclaimed(String),
}

/// Creations in progress, and finished ones not yet claimed, by request key (the name the
/// object will have).
pub struct Creations {
    entries: Mutex<HashMap<String, Entry>>,
    /// How long an unclaimed result waits ([`ABANDONED_GRACE`]; shorter in tests).
    grace: Duration,
}

impl Default for Creations {
    fn default() -> Self {
        Creations::with_grace(ABANDONED_GRACE)
    }
}

impl Creations {
    pub fn with_grace(grace: Duration) -> Self {
        Creations {
            entries: Mutex::default(),
            grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `create` for `key` in its own task, or joins the one already running for the same
    /// key, or hands out the id an abandoned one made. `undo` removes what an unclaimed
    /// creation made once [`ABANDONED_GRACE`] has passed.
    pub async fn run(
        self: &Arc<Self>,
        key: String,
        create: impl Future<Output = Created> + Send + 'static,
        undo: impl FnOnce(String) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Created {
        let mut result = {
            let mut entries = self.lock();
            match entries.get(&key) {
                Some(Entry::Running(rx)) => {
                    tracing::info!(%key, "a retry joins the creation still in progress");
                    rx.clone()
                }
                Some(Entry::Unclaimed(id)) => {
                    let id = id.clone();
                    entries.remove(&key);
                    tracing::info!(%key, %id, "a retry takes what its first request created");
                    return Ok(id);
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    entries.insert(key.clone(), Entry::Running(rx.clone()));
                    tokio::spawn(self.clone().finish(key.clone(), create, undo, tx));
                    rx
                }
            }
        };
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or_else(|| Err(lost())),
            Err(_) => Err(lost()),
        };
        if let Ok(id) = &outcome {
            let mut entries = self.lock();
            if matches!(entries.get(&key), Some(Entry::Unclaimed(held)) if held == id) {
                entries.remove(&key);
            }
        }
        outcome
    }

    async fn finish(
        self: Arc<Self>,
        key: String,
        create: impl Future<Output = Created> + Send + 'static,
        undo: impl FnOnce(String) -> BoxFuture<'static, ()> + Send + 'static,
        tx: watch::Sender<Option<Created>>,
    ) {
        let outcome = create.await;
        {
            // Recorded before the waiters wake: the first to read it claims it.
            let mut entries = self.lock();
            match &outcome {
                Ok(id) => entries.insert(key.clone(), Entry::Unclaimed(id.clone())),
                Err(_) => entries.remove(&key),
            };
            let _ = tx.send(Some(outcome.clone()));
        }
        let Ok(id) = outcome else { return };
        tokio::time::sleep(self.grace).await;
        let unclaimed = {
            let mut entries = self.lock();
            let unclaimed =
                matches!(entries.get(&key), Some(Entry::Unclaimed(held)) if *held == id);
            if unclaimed {
                entries.remove(&key);
            }
            unclaimed
        };
        if unclaimed {
            tracing::warn!(%key, %id, "nobody claimed what an abandoned request created: removing it");
            undo(id).await;
        }
    }
}

fn lost() -> Status {
    DaemonError::Internal("the creation's task ended without a result".into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn no_undo() -> impl FnOnce(String) -> BoxFuture<'static, ()> + Send + 'static {
        |_| Box::pin(async {})
    }

    #[tokio::test]
    async fn a_retry_joins_the_running_creation_and_gets_its_id() {
        let creations = Arc::new(Creations::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let counted = runs.clone();
        let first = {
            let creations = creations.clone();
            tokio::spawn(async move {
                creations
                    .run(
                        "pod/a".into(),
                        async move {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let _ = wait.await;
                            Ok("id-1".to_owned())
                        },
                        no_undo(),
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        // The first client gives up: its future is dropped, the creation goes on.
        first.abort();
        let retry = {
            let creations = creations.clone();
            tokio::spawn(async move {
                creations
                    .run("pod/a".into(), async { Ok("id-2".to_owned()) }, no_undo())
                    .await
            })
        };
        tokio::task::yield_now().await;
        go.send(()).expect("creation waits");
        assert_eq!(retry.await.expect("retry").expect("created"), "id-1");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(creations.lock().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_creation_is_claimed_by_a_late_retry_or_undone() {
        let grace = Duration::from_millis(300);
        let creations = Arc::new(Creations::with_grace(grace));
        let undone = Arc::new(Mutex::new(Vec::<String>::new()));
        for (key, id) in [("claimed", "id-c"), ("abandoned", "id-a")] {
            let undone = undone.clone();
            let creations = creations.clone();
            let task = tokio::spawn(async move {
                creations
                    .run(
                        key.into(),
                        async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(id.to_owned())
                        },
                        move |id| Box::pin(async move { undone.lock().expect("lock").push(id) }),
                    )
                    .await
            });
            tokio::task::yield_now().await;
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let late = creations
            .run(
                "claimed".into(),
                async { Ok("other".to_owned()) },
                no_undo(),
            )
            .await;
        assert_eq!(late.expect("claimed"), "id-c");
        tokio::time::sleep(grace).await;
        assert_eq!(*undone.lock().expect("lock"), vec!["id-a".to_owned()]);
        assert!(creations.lock().is_empty());
    }

    #[tokio::test]
    async fn a_failed_creation_leaves_nothing_and_the_retry_runs_again() {
        let creations = Arc::new(Creations::default());
        let failed = creations
            .run(
                "pod/f".into(),
                async { Err(Status::invalid_argument("bad")) },
                no_undo(),
            )
            .await;
        assert_eq!(
            failed.expect_err("fails").code(),
            tonic::Code::InvalidArgument
        );
        let again = creations
            .run("pod/f".into(), async { Ok("id".to_owned()) }, no_undo())
            .await;
        assert_eq!(again.expect("runs"), "id");
        assert!(creations.lock().is_empty());
    }
}
