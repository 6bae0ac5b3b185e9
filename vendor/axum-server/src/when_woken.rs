//! ALB patch (see `ALB-PATCH.md`): a future polled only when its own waker fired.
//!
//! A connection's task is woken for every read and write. The shutdown signals it waits on
//! beside the connection are tokio `Notify` futures, whose poll takes the `Notify`'s lock
//! even when nothing happened; polling them on every wake cost about 1 000 instructions per
//! proxied request in ALB (callgrind). Wrapped in [`WhenWoken`], they are polled again only
//! after one of them woke the task.

use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
};

/// What the inner future's waker does: notes the wake, then wakes the task.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

pin_project! {
    /// `inner`, polled on the first poll and then only after its own waker fired.
    pub(crate) struct WhenWoken<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        // The waker `inner` is polled with.
        waker: Waker,
        // The task's waker last handed to `flag`: compared on each poll, so the lock is
        // taken only when the task changes (in practice, on the first poll).
        task: Option<Waker>,
    }
}

impl<F> WhenWoken<F> {
    pub(crate) fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        WhenWoken {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *this.task = Some(cx.waker().clone());
            *this.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        }
        if !this.flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a wake during or after it is seen on the next one.
        this.flag.woken.store(false, Ordering::Release);
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}
