//! A fixed pool of worker threads that run request handlers, fed through a bounded queue.
//!
//! Waking a thread is the expensive part of handing it a job: a futex call, a context switch
//! and, across cores, an inter-processor interrupt, several microseconds each on a virtual
//! machine. Requests arrive in bursts (one `recvmmsg` brings several), so the pool wakes as
//! few workers as keep every queued job moving:
//!
//! * Jobs are queued without waking anyone; the I/O thread calls [`Pool::start_queued`] once
//!   it has queued the whole burst, so a worker woken for the first job does not take the
//!   core from the I/O thread before it has read the rest (on one core, a woken thread
//!   usually runs at once).
//! * A burst queued while a worker is already on its way (woken, not yet holding a job) wakes
//!   nobody: that worker takes it, or passes the word on.
//! * A worker that takes a job and leaves others queued wakes one more idle worker, if none is
//!   on its way. So a slow handler never holds up the jobs behind it while a worker is idle,
//!   and a burst of quick jobs is run by the workers already awake, mostly by one of them,
//!   each waking at most one other.
//! * A worker that finishes a job takes the next one without sleeping.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use coap_proto::host::Job;

use crate::Error;

/// The workers stop once the pool is dropped and the queue is empty.
#[derive(Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
    capacity: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

struct State {
    queue: VecDeque<Job>,
    /// Workers waiting on the condition variable.
    idle: usize,
    /// Wake-ups sent that no worker has taken up yet.
    on_the_way: usize,
    /// False once the pool is dropped.
    open: bool,
}

impl State {
    /// Wakes one idle worker if jobs are queued and no worker is already on its way to them.
    fn wake_one_if_needed(&mut self, wake: &Condvar) {
        if !self.queue.is_empty() && self.on_the_way == 0 && self.idle > 0 {
            self.on_the_way += 1;
            wake.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a panic cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                state.wake_one_if_needed(&self.wake);
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            if !state.open {
                return;
            }
            state.idle += 1;
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
            // Woken by a notification or spuriously: either way this worker now looks at the
            // queue, which is what the wake-up was for.
            state.on_the_way = state.on_the_way.saturating_sub(1);
        }
    }
}

impl Pool {
    /// Starts `workers` threads (at least one) behind a queue of `capacity` jobs.
    pub(crate) fn new(workers: usize, capacity: usize) -> Result<Pool, Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(capacity.min(1024)),
                idle: 0,
                on_the_way: 0,
                open: true,
            }),
            wake: Condvar::new(),
        });
        let pool = Pool {
            shared: Arc::clone(&shared),
            capacity,
        };
        for n in 0..workers.max(1) {
            let shared = Arc::clone(&shared);
            // On failure `pool` is dropped, which stops the threads already started.
            thread::Builder::new()
                .name(format!("coap-worker-{n}"))
                .spawn(move || shared.work())?;
        }
        Ok(pool)
    }

    /// Queues `job` without waking a worker; false (and the job dropped) if the queue is
    /// full. Call [`Pool::start_queued`] once the burst is queued.
    pub(crate) fn queue(&self, job: Job) -> bool {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.capacity {
            return false;
        }
        state.queue.push_back(job);
        true
    }

    /// Wakes a worker for the queued jobs, unless one is already on its way.
    pub(crate) fn start_queued(&self) {
        self.shared.lock().wake_one_if_needed(&self.shared.wake);
    }

    /// Queues `job` and wakes a worker for it: [`Pool::queue`] and [`Pool::start_queued`].
    #[cfg(test)]
    fn try_run(&self, job: Job) -> bool {
        let queued = self.queue(job);
        self.start_queued();
        queued
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().open = false;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Barrier};
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn runs_jobs_in_parallel_and_refuses_beyond_the_queue() {
        let pool = Pool::new(2, 1).unwrap();
        let barrier = Arc::new(Barrier::new(3));
        let (started_tx, started_rx) = mpsc::channel();
        for _ in 0..2 {
            let barrier = Arc::clone(&barrier);
            let started = started_tx.clone();
            let job: Job = Box::new(move || {
                started.send(()).unwrap();
                barrier.wait();
            });
            assert!(pool.try_run(job));
            // Wait until a worker holds it, so the one-slot queue is free again.
            started_rx.recv_timeout(PATIENCE).unwrap();
        }
        // Both workers wait at the barrier: the queue takes one job and refuses the next.
        assert!(pool.try_run(Box::new(|| {})));
        assert!(!pool.try_run(Box::new(|| {})), "a full queue refuses");
        barrier.wait();
    }

    /// Queues `jobs` as a burst that arrives while every worker sleeps, as the I/O thread
    /// does: one [`Pool::queue`] each, then one [`Pool::start_queued`].
    fn burst(pool: &Pool, workers: usize, jobs: Vec<Job>) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while pool.shared.lock().idle < workers {
            assert!(
                std::time::Instant::now() < deadline,
                "workers never went idle"
            );
            thread::yield_now();
        }
        for job in jobs {
            assert!(pool.queue(job));
        }
        assert_eq!(pool.shared.lock().on_the_way, 0, "queueing wakes nobody");
        pool.start_queued();
    }

    /// A burst whose first job does not return until the burst's last job has run: only a
    /// second worker, woken by the first when it left jobs queued, can run it.
    #[test]
    fn a_slow_job_does_not_hold_up_those_queued_behind_it() {
        let pool = Pool::new(2, 16).unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (finished_tx, finished_rx) = mpsc::channel();
        let mut jobs: Vec<Job> = vec![Box::new(move || {
            let got = done_rx.recv_timeout(PATIENCE).is_ok();
            finished_tx.send(got).unwrap();
        })];
        for _ in 0..3 {
            jobs.push(Box::new(|| {}));
        }
        jobs.push(Box::new(move || done_tx.send(()).unwrap()));
        burst(&pool, 2, jobs);
        assert_eq!(finished_rx.recv_timeout(PATIENCE), Ok(true));
    }

    /// Many producers, short jobs, a small queue: every accepted job runs exactly once, and
    /// the jobs still queued when the pool is dropped run before the workers stop.
    #[test]
    fn every_accepted_job_runs_once() {
        let ran = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(Pool::new(3, 8).unwrap());
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, ran, accepted) =
                    (Arc::clone(&pool), Arc::clone(&ran), Arc::clone(&accepted));
                thread::spawn(move || {
                    for _ in 0..2000 {
                        let ran = Arc::clone(&ran);
                        if pool.try_run(Box::new(move || {
                            ran.fetch_add(1, Ordering::SeqCst);
                        })) {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        } else {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let accepted = accepted.load(Ordering::SeqCst);
        assert!(accepted > 0);
        let shared = Arc::clone(&pool.shared);
        drop(pool);
        // The pool is gone; its workers drain the queue, then stop.
        let deadline = std::time::Instant::now() + PATIENCE;
        while ran.load(Ordering::SeqCst) < accepted && std::time::Instant::now() < deadline {
            thread::yield_now();
        }
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
        assert!(shared.lock().queue.is_empty());
    }
}
