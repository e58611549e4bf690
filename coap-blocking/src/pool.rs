//! A fixed pool of worker threads that run request handlers, fed through a bounded queue.

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;

use coap_proto::host::Job;

use crate::Error;

/// The workers stop when the pool (the only sender) is dropped and the queue is empty.
#[derive(Debug)]
pub(crate) struct Pool {
    jobs: mpsc::SyncSender<Job>,
}

impl Pool {
    /// Starts `workers` threads (at least one) behind a queue of `capacity` jobs.
    pub(crate) fn new(workers: usize, capacity: usize) -> Result<Pool, Error> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            thread::Builder::new()
                .name(format!("coap-worker-{n}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for a job, never while running one.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(Pool { jobs })
    }

    /// Queues `job`; false (and the job dropped) if the queue is full.
    pub(crate) fn try_run(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

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
            started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Both workers wait at the barrier: the queue takes one job and refuses the next.
        assert!(pool.try_run(Box::new(|| {})));
        assert!(!pool.try_run(Box::new(|| {})), "a full queue refuses");
        barrier.wait();
    }
}
