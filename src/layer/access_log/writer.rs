//! The access log's writer: a bounded queue in front of a thread that owns the file.
//!
//! Requests never wait for the disk: a finished line is handed over with a non-blocking
//! `try_send` into a queue of [`QUEUE_LINES`]; when the queue is full (the disk cannot keep
//! up), the line is dropped and counted in `lb_access_log_dropped_total`, never silently.
//! The thread does not wait on the queue (each line would then wake it, a context switch
//! and a `write` per request, about a tenth of a request's cost): it wakes every
//! [`FLUSH_INTERVAL`], takes every waiting line and writes them in one go, as nginx's
//! `access_log ... buffer= flush=` does. A line reaches the file within that interval. [`LogWriter::reopen`] (SIGUSR1, as nginx) makes
//! the thread flush, close and open the path again: after logrotate's `mv`, new lines go to
//! a new file and none is lost, since lines queue up while the file changes.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError},
        Arc,
    },
    time::Duration,
};

use metrics::Counter;

use crate::telemetry::ACCESS_LOG_DROPPED_TOTAL;

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// How often the writer takes the waiting lines and writes them (the queue holds
/// [`QUEUE_LINES`] lines, so up to about 300 000 lines per second are written in full).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The process's standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// The sending side, shared by every request; the thread ends (after writing what is left)
/// within [`FLUSH_INTERVAL`] of the last one dropping. [`LogWriter::flush`] writes at once.
#[derive(Debug, Clone)]
pub struct LogWriter {
    lines: SyncSender<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    flushes: SyncSender<SyncSender<()>>,
    thread: std::thread::Thread,
    dropped: Counter,
}

impl LogWriter {
    /// Opens `target` (so a bad path fails before the proxy starts) and starts the thread.
    pub fn open(target: &Target) -> io::Result<Self> {
        let out = Output::open(target)?;
        let (lines, queue) = sync_channel(QUEUE_LINES);
        let (flushes, flush_requests) = sync_channel(4);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let thread = std::thread::Builder::new()
            .name("alb-access-log".to_owned())
            .spawn(move || write_lines(out, &queue, &flush_requests, &flag))?
            .thread()
            .clone();
        Ok(LogWriter {
            lines,
            reopen,
            flushes,
            thread,
            dropped: metrics::counter!(ACCESS_LOG_DROPPED_TOTAL),
        })
    }

    /// Writes every queued line now and waits (at most `timeout`) until it is written: at
    /// shutdown, so the last lines are not lost with the process.
    pub fn flush(&self, timeout: Duration) {
        let (ack, done) = sync_channel(1);
        if self.flushes.try_send(ack).is_ok() {
            self.thread.unpark();
            let _ = done.recv_timeout(timeout);
        }
    }

    /// Queues one line (with its newline); never blocks.
    pub fn send(&self, line: Vec<u8>) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.increment(1),
        }
    }

    /// Asks the writer to close and reopen its file (after a rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

/// The open destination.
enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(PathBuf, BufWriter<File>),
}

impl Output {
    fn open(target: &Target) -> io::Result<Output> {
        Ok(match target {
            Target::Stdout => Output::Stdout(BufWriter::new(io::stdout())),
            Target::File(path) => Output::File(path.clone(), BufWriter::new(append(path)?)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(_, w) => w,
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The thread: every interval (or at once when a flush is asked for), reopen if asked, then
/// write every waiting line, flush, and answer the flush requests.
fn write_lines(
    mut out: Output,
    queue: &Receiver<Vec<u8>>,
    flush_requests: &Receiver<SyncSender<()>>,
    reopen: &AtomicBool,
) {
    loop {
        std::thread::park_timeout(FLUSH_INTERVAL);
        let acks: Vec<SyncSender<()>> = flush_requests.try_iter().collect();
        // A reopen asked for before these lines were taken applies to them too.
        if reopen.swap(false, Ordering::Relaxed) {
            reopen_file(&mut out);
        }
        let writer = out.writer();
        let mut wrote = false;
        let ended = loop {
            match queue.try_recv() {
                Ok(line) => {
                    let _ = writer.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            if let Err(e) = writer.flush() {
                tracing::warn!(error = %e, "access log write failed");
            }
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
        if ended {
            return;
        }
    }
}

/// Flushes the old file and opens the path again (a new file after a rotation).
fn reopen_file(out: &mut Output) {
    let _ = out.writer().flush();
    if let Output::File(path, writer) = out {
        match append(path) {
            Ok(file) => *writer = BufWriter::new(file),
            Err(e) => tracing::error!(path = %path.display(), error = %e,
                "cannot reopen the access log; still writing to the old file"),
        }
    }
}
