//! The access log's writer (and the traffic recorder's): a bounded queue in front of a
//! thread that owns the file.
//!
//! Requests never wait for the disk: a finished line is handed over with a non-blocking
//! `try_send` into a queue of [`QUEUE_LINES`]; when the queue is full (the disk cannot keep
//! up), the line is dropped and counted in `lb_access_log_dropped_total`, never silently.
//! The thread does not wait on the queue (each line would then wake it, a context switch
//! and a `write` per request, about a tenth of a request's cost): it wakes every
//! [`FLUSH_INTERVAL`], takes every waiting line and writes them in one go, as nginx's
//! `access_log ... buffer= flush=` does. A line reaches the file within that interval. [`LogWriter::reopen`] (SIGUSR1, as nginx) makes
//! the thread flush, close and open the path again: after logrotate's `mv`, new lines go to
//! a new file and none is lost, since lines queue up while the file changes. A writer opened
//! with a size cap ([`LogWriter::open_rotating`]) rotates by itself: past the cap it renames
//! the file to `PATH.1` (replacing the previous one) and starts a new one.

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
        Self::start(
            Output::open(target, None)?,
            "alb-access-log",
            metrics::counter!(ACCESS_LOG_DROPPED_TOTAL),
        )
    }

    /// Opens the file at `path` for appending, rotated past `max_bytes`; a line the queue
    /// has no room for is counted in `dropped`.
    pub fn open_rotating(
        path: &Path,
        max_bytes: u64,
        thread_name: &str,
        dropped: Counter,
    ) -> io::Result<Self> {
        let out = Output::open(&Target::File(path.to_owned()), Some(max_bytes))?;
        Self::start(out, thread_name, dropped)
    }

    fn start(out: Output, thread_name: &str, dropped: Counter) -> io::Result<Self> {
        let (lines, queue) = sync_channel(QUEUE_LINES);
        let (flushes, flush_requests) = sync_channel(4);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || write_lines(out, &queue, &flush_requests, &flag))?
            .thread()
            .clone();
        Ok(LogWriter {
            lines,
            reopen,
            flushes,
            thread,
            dropped,
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
    File(OpenFile),
}

/// A file being appended to, with its size for rotation.
struct OpenFile {
    path: PathBuf,
    writer: BufWriter<File>,
    size: u64,
    rotate_at: Option<u64>,
}

impl Output {
    fn open(target: &Target, rotate_at: Option<u64>) -> io::Result<Output> {
        Ok(match target {
            Target::Stdout => Output::Stdout(BufWriter::new(io::stdout())),
            Target::File(path) => {
                let file = append(path)?;
                Output::File(OpenFile {
                    path: path.clone(),
                    size: file.metadata().map_or(0, |m| m.len()),
                    writer: BufWriter::new(file),
                    rotate_at,
                })
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(f) => &mut f.writer,
        }
    }

    /// Writes one line, rotating first if it would take the file past its cap.
    fn write_line(&mut self, line: &[u8]) {
        if let Output::File(f) = self {
            if f.rotate_at
                .is_some_and(|cap| f.size > 0 && f.size + line.len() as u64 > cap)
            {
                rotate(f);
            }
            f.size += line.len() as u64;
        }
        let _ = self.writer().write_all(line);
    }
}

/// Moves the full file to `PATH.1` and starts a new one.
fn rotate(f: &mut OpenFile) {
    let _ = f.writer.flush();
    let mut rotated = f.path.clone().into_os_string();
    rotated.push(".1");
    let reopened = std::fs::rename(&f.path, &rotated).and_then(|()| append(&f.path));
    match reopened {
        Ok(file) => {
            f.writer = BufWriter::new(file);
            f.size = 0;
        }
        Err(e) => tracing::error!(path = %f.path.display(), error = %e,
            "cannot rotate; still writing to the old file"),
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
        let mut wrote = false;
        let ended = loop {
            match queue.try_recv() {
                Ok(line) => {
                    out.write_line(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            if let Err(e) = out.writer().flush() {
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
    if let Output::File(f) = out {
        match append(&f.path) {
            Ok(file) => {
                f.size = file.metadata().map_or(0, |m| m.len());
                f.writer = BufWriter::new(file);
            }
            Err(e) => tracing::error!(path = %f.path.display(), error = %e,
                "cannot reopen the access log; still writing to the old file"),
        }
    }
}
