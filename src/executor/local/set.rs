//! The running steps of a run, polled inside the scheduler's own task.
//!
//! Each step could be a tokio task of its own, but then every step hops between tasks (spawn, the
//! child's exit, the join) and, on a multi-thread runtime, between worker threads: measured on a
//! sequence of `true` steps, a multi-thread runtime was about a fifth slower than a current-thread
//! one, mostly from such hops. Here the step futures live in the scheduler's future instead. Each
//! has its own waker that queues its slot and wakes the scheduler, so only the steps that were
//! woken are polled. A step that panics is dropped (its process group is killed by the guard's
//! `Drop`) and reported as an error, as a failed task would be.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use super::attempt::StepResult;

type StepFuture = Pin<Box<dyn Future<Output = StepResult> + Send>>;

/// Running step futures, keyed by step index.
pub(super) struct StepSet {
    slots: Vec<Slot>,
    free: Vec<usize>,
    running: usize,
    wakeups: Arc<Wakeups>,
}

struct Slot {
    step: usize,
    future: Option<StepFuture>,
    waker: Waker,
}

/// Slots woken since the last poll, and the scheduler's waker.
#[derive(Default)]
struct Wakeups {
    state: Mutex<WakeState>,
}

#[derive(Default)]
struct WakeState {
    ready: Vec<usize>,
    parent: Option<Waker>,
}

impl Wakeups {
    fn lock(&self) -> MutexGuard<'_, WakeState> {
        // The lock guards plain data; a panic while holding it leaves that data usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self, slot: usize) {
        let parent = {
            let mut state = self.lock();
            state.ready.push(slot);
            state.parent.take()
        };
        if let Some(parent) = parent {
            parent.wake();
        }
    }
}

struct SlotWaker {
    slot: usize,
    wakeups: Arc<Wakeups>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wakeups.wake(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakeups.wake(self.slot);
    }
}

impl StepSet {
    pub fn new() -> StepSet {
        StepSet {
            slots: Vec::new(),
            free: Vec::new(),
            running: 0,
            wakeups: Arc::new(Wakeups::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.running
    }

    pub fn is_empty(&self) -> bool {
        self.running == 0
    }

    /// The steps running now.
    pub fn indices(&self) -> Vec<usize> {
        self.slots
            .iter()
            .filter(|s| s.future.is_some())
            .map(|s| s.step)
            .collect()
    }

    /// Adds the future of step `step`; it is first polled by the next `next`.
    pub fn push(&mut self, step: usize, future: impl Future<Output = StepResult> + Send + 'static) {
        let future: StepFuture = Box::pin(future);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot].step = step;
                self.slots[slot].future = Some(future);
                slot
            }
            None => {
                let slot = self.slots.len();
                let waker = Waker::from(Arc::new(SlotWaker {
                    slot,
                    wakeups: self.wakeups.clone(),
                }));
                self.slots.push(Slot {
                    step,
                    future: Some(future),
                    waker,
                });
                slot
            }
        };
        self.running += 1;
        // Polled by the next `next`, which the scheduler calls after starting steps: no wake needed.
        self.wakeups.lock().ready.push(slot);
    }

    /// The next step to finish, with its result; `None` when nothing is running.
    pub async fn next(&mut self) -> Option<(usize, StepResult)> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, StepResult)>> {
        if self.running == 0 {
            return Poll::Ready(None);
        }
        let ready = {
            let mut state = self.wakeups.lock();
            match &state.parent {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.parent = Some(cx.waker().clone()),
            }
            std::mem::take(&mut state.ready)
        };
        for (k, &id) in ready.iter().enumerate() {
            let Some(slot) = self.slots.get_mut(id) else {
                continue;
            };
            let Some(future) = slot.future.as_mut() else {
                continue;
            };
            let mut slot_cx = Context::from_waker(&slot.waker);
            let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut slot_cx)));
            let result = match polled {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(result)) => result,
                Err(_) => StepResult::error("internal error: the step panicked".into()),
            };
            slot.future = None;
            let step = slot.step;
            self.free.push(id);
            self.running -= 1;
            let rest = &ready[k + 1..];
            if !rest.is_empty() {
                self.wakeups.lock().ready.extend_from_slice(rest);
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Some((step, result)));
        }
        Poll::Pending
    }
}
