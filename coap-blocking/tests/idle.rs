//! The I/O threads sleep when there is nothing to do. Alone in its own test binary, so the
//! process's CPU time is theirs.

#![cfg(target_os = "linux")]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use coap_blocking::{Client, IncomingRequest, Response, Router, Server};

/// The tests of this binary measure the whole process: they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// CPU time (user + system) this process has used, in clock ticks (Linux `/proc`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with ')': utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_threads_sleep_instead_of_polling() {
    let _turn = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    bounded(|| {
        let server = Server::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        let app =
            Router::new().observable("/counter", |_req: IncomingRequest| Response::content("1"));
        thread::spawn(move || server.serve(app));
        let client = Client::bind("127.0.0.1:0").unwrap();
        // An observation keeps state on both sides, with timers far in the future.
        let mut obs = client.observe(format!("coap://{addr}/counter")).unwrap();
        assert!(obs.next().unwrap().is_ok());
        let before = cpu_ticks();
        thread::sleep(Duration::from_millis(1500));
        let used = cpu_ticks() - before;
        // Clock ticks are 10 ms: a thread spinning for 1.5 s would use about 150.
        assert!(used <= 5, "{used} ticks of CPU while idle");
        // Still alive: a notification goes through at once.
        handle.notifier("/counter").notify().unwrap();
        assert!(obs.next().unwrap().is_ok());
    });
}

/// Runs `body` on a thread and fails if it takes more than a minute.
fn bounded(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test took too long"),
    }
}

/// How many threads of this process carry `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn dropping_the_last_client_handle_ends_its_thread() {
    let _turn = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    bounded(|| {
        // The other test of this binary may leave a client thread ending: count relative.
        let before = threads_named("coap-client-io");
        let client = Client::bind("127.0.0.1:0").unwrap();
        let clone = client.clone();
        // A new thread names itself once it runs.
        wait_for_threads(before + 1);
        drop(client);
        // A clone still holds it.
        thread::sleep(Duration::from_millis(50));
        assert_eq!(threads_named("coap-client-io"), before + 1);
        drop(clone);
        wait_for_threads(before);
    });
}

/// Waits until `n` threads named `coap-client-io` exist; fails after ten seconds.
fn wait_for_threads(n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while threads_named("coap-client-io") != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} client I/O threads, expected {n}",
            threads_named("coap-client-io")
        );
        thread::sleep(Duration::from_millis(5));
    }
}
