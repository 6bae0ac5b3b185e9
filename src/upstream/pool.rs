//! Idle keep-alive connections to one backend.
//!
//! A stack (last in, first out: the warmest connection is reused first, the coldest age
//! out) behind a per-backend mutex held only to push or pop. A connection is owned by the
//! request using it, so no task and no channel sit between a request and its socket.
//!
//! An idle connection the backend closed is noticed without a system call: the reactor
//! marks its socket readable (end of stream), so checkout skips it. Only when the socket
//! looks readable does checkout read it to tell a close from a stale readiness flag.
//!
//! Idle time is counted in sweeps, not read from the clock: [`ConnectionPool::sweep`] runs
//! every [`SWEEP_INTERVAL`] and closes connections that stayed idle through
//! [`IDLE_SWEEPS`] of them, so checkout and release read no clock.
//!
//! Each connection keeps one timer for the deadlines of all the requests it carries
//! ([`Connection::poll_deadline`]). Moving a registered tokio timer later is one atomic
//! exchange; a timer per request is registered and removed under the timer driver's lock
//! each time.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::BytesMut;
use http::uri::Authority;
use tokio::{
    net::TcpStream,
    time::{Instant, Sleep},
};

/// How often idle connections are checked ([`ConnectionPool::sweep`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Sweeps an idle connection survives; it is closed after between `IDLE_SWEEPS` and
/// `IDLE_SWEEPS + 1` sweep intervals of idleness.
pub const IDLE_SWEEPS: u64 = 9;

/// How long an idle connection is kept, about (see [`IDLE_SWEEPS`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(SWEEP_INTERVAL.as_secs() * IDLE_SWEEPS);

/// Most idle connections kept per backend; more are closed when they are released.
pub const MAX_IDLE: usize = 1024;

/// Initial read buffer of a connection: one response head's read. A body read grows it;
/// a small answer never does. Each open connection keeps its buffer, so at 1024 connections
/// every kilobyte here is a mebibyte of memory.
const BUFFER_CAPACITY: usize = super::HEAD_READ;

/// The idle connections to one backend, and how to open new ones.
#[derive(Debug)]
pub struct ConnectionPool {
    authority: Authority,
    connect_timeout: Duration,
    idle: Mutex<IdleStack>,
}

#[derive(Debug, Default)]
struct IdleStack {
    connections: VecDeque<Idle>,
    /// Sweeps done so far.
    sweeps: u64,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    buffer: BytesMut,
    timer: Option<Pin<Box<Sleep>>>,
    /// The sweep count when it was released.
    since_sweep: u64,
}

/// A connection owned by one request; its response body gives it back to the pool.
#[derive(Debug)]
pub struct Connection {
    pub(crate) stream: TcpStream,
    /// Bytes read from the backend and not consumed yet.
    pub(crate) buffer: BytesMut,
    /// Whether it served a request before (a stale keep-alive connection can fail once).
    pub(crate) reused: bool,
    /// The current request's deadline, if it has one.
    deadline: Option<Instant>,
    /// The connection's one timer, made at its first deadline and moved for each later one.
    timer: Option<Pin<Box<Sleep>>>,
    pool: Arc<ConnectionPool>,
}

impl ConnectionPool {
    /// An empty pool for `authority` (`host:port`).
    pub fn new(authority: Authority, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(ConnectionPool {
            authority,
            connect_timeout,
            idle: Mutex::new(IdleStack::default()),
        })
    }

    /// The backend this pool connects to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The connect timeout of new connections.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A new connection, bypassing idle ones.
    pub async fn connect(self: &Arc<Self>) -> io::Result<Connection> {
        let connecting = TcpStream::connect(self.authority.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {}",
                        humantime::format_duration(self.connect_timeout)
                    ),
                ))
            }
        };
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: BytesMut::with_capacity(BUFFER_CAPACITY),
            reused: false,
            deadline: None,
            timer: None,
            pool: self.clone(),
        })
    }

    /// Closes idle connections that stayed idle through [`IDLE_SWEEPS`] sweeps or that the
    /// backend closed. Call every [`SWEEP_INTERVAL`].
    pub fn sweep(&self) {
        let mut stack = self.lock();
        stack.sweeps += 1;
        let oldest_kept = stack.sweeps.saturating_sub(IDLE_SWEEPS);
        stack
            .connections
            .retain_mut(|idle| idle.since_sweep >= oldest_kept && idle.alive());
    }

    /// A warm idle connection, if one is usable.
    pub(crate) fn take_idle(self: &Arc<Self>) -> Option<Connection> {
        loop {
            let mut idle = self.lock().connections.pop_back()?;
            if !idle.alive() {
                continue;
            }
            return Some(Connection {
                stream: idle.stream,
                buffer: std::mem::take(&mut idle.buffer),
                reused: true,
                deadline: None,
                timer: idle.timer.take(),
                pool: self.clone(),
            });
        }
    }

    fn put(&self, stream: TcpStream, buffer: BytesMut, timer: Option<Pin<Box<Sleep>>>) {
        let mut stack = self.lock();
        if stack.connections.len() >= MAX_IDLE {
            return;
        }
        let since_sweep = stack.sweeps;
        stack.connections.push_back(Idle {
            stream,
            buffer,
            timer,
            since_sweep,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleStack> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Idle {
    /// Whether the backend kept the connection open: an idle connection must have nothing
    /// to read (not even the end of the stream).
    fn alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read; a read settles it.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Connection {
    /// Reads at least once into the buffer, up to `want` more bytes; `Ok(0)` at end of stream.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        self.buffer.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffer)
    }

    /// Ends this request's use: back to the pool if `reusable` and nothing unread is left,
    /// closed otherwise.
    pub(crate) fn release(self, reusable: bool) {
        if reusable && self.buffer.is_empty() {
            self.pool.put(self.stream, self.buffer, self.timer);
        }
    }

    /// Sets the current request's deadline (`None`: it has none).
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Ready once the current request's deadline has passed; never without one. The timer
    /// is moved here rather than when the deadline is set: a request that is answered
    /// before its first wait never touches it.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    // Later than before (the usual case): one atomic exchange, no lock.
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx)
    }
}
