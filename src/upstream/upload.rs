//! A request body of known length (`Content-Length`), written to the backend's connection as
//! it arrives from the client.
//!
//! At most one frame of the client's body is held at a time (what hyper's server read off
//! the client's socket): the next is taken only once the last is written, so a slow backend
//! slows the client's upload (TCP back-pressure both ways) and a 100 MB upload costs no more
//! memory than a small one.
//!
//! The body must carry exactly the bytes its `Content-Length` announced: a shorter or
//! longer body is the client's failure ([`UploadError::Client`]), and the connection, whose
//! framing is then broken, is closed by its owner. Trailers (possible over HTTP/2 only) are
//! not sent: a length-delimited HTTP/1.1 message has nowhere to put them (hyper's client
//! drops them too).

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::{body::Body, BoxError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body as _;
use tokio::{io::AsyncWrite, net::TcpStream};

/// Most body bytes copied behind the request head so that both go out in one write (a small
/// POST then costs one system call, like a GET). Larger frames are written as they are.
pub const COALESCE_LIMIT: usize = 16 * 1024;

/// The part of a request body still to be sent.
#[derive(Debug)]
pub struct Upload {
    body: Body,
    /// Bytes the body must still yield.
    left: u64,
    /// Taken from the body, not written yet.
    pending: Bytes,
    /// Whether any of the body went out behind the head (then the request cannot be sent
    /// again on another connection).
    wrote: bool,
}

/// Why an upload stopped.
#[derive(Debug)]
pub enum UploadError {
    /// The client's body failed: it broke off, was malformed, passed the body limit, or did
    /// not match its `Content-Length`.
    Client(BoxError),
    /// Writing to the backend failed.
    Backend(io::Error),
}

impl Upload {
    /// The upload of `body`, which must yield exactly `length` bytes.
    pub fn new(body: Body, length: u64) -> Self {
        Upload {
            body,
            left: length,
            pending: Bytes::new(),
            wrote: false,
        }
    }

    /// Whether every byte has been written (or copied behind the head).
    pub fn is_done(&self) -> bool {
        self.left == 0 && self.pending.is_empty()
    }

    /// Whether body bytes were written beyond what [`Upload::coalesce`] copied.
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Copies behind `head` the body frames that are ready now, up to [`COALESCE_LIMIT`] bytes
    /// in all; a frame that does not fit stays pending.
    pub fn coalesce(
        &mut self,
        cx: &mut Context<'_>,
        head: &mut BytesMut,
    ) -> Result<(), UploadError> {
        let mut room = COALESCE_LIMIT;
        loop {
            if !self.pending.is_empty() {
                if self.pending.len() > room {
                    return Ok(());
                }
                room -= self.pending.len();
                head.put_slice(&self.pending);
                self.pending = Bytes::new();
            }
            match self.poll_next(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) | Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
    }

    /// Writes the body to `stream` as it arrives; `Ready(Ok)` once all of it is written.
    pub fn poll_write(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.pending.is_empty() {
                let written = ready!(Pin::new(&mut *stream).poll_write(cx, &self.pending))
                    .map_err(UploadError::Backend)?;
                if written == 0 {
                    return Poll::Ready(Err(UploadError::Backend(io::ErrorKind::WriteZero.into())));
                }
                self.wrote = true;
                self.pending.advance(written);
            }
            if !ready!(self.poll_next(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Takes the next data frame into `pending`: `Ok(true)` if one came, `Ok(false)` when
    /// the body is complete.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, UploadError>> {
        loop {
            if self.left == 0 {
                return Poll::Ready(Ok(false));
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Err(UploadError::Client(e.into_inner()))),
                None => return Poll::Ready(Err(mismatch("shorter"))),
            };
            // Trailers: nothing to send them in (see the module docs).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.len() as u64 > self.left {
                return Poll::Ready(Err(mismatch("longer")));
            }
            if data.is_empty() {
                continue;
            }
            self.left -= data.len() as u64;
            self.pending = data;
            return Poll::Ready(Ok(true));
        }
    }
}

fn mismatch(how: &str) -> UploadError {
    UploadError::Client(format!("request body {how} than its Content-Length").into())
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn coalesced(body: Body, length: u64) -> (Result<(), String>, BytesMut, Upload) {
        let mut upload = Upload::new(body, length);
        let mut head = BytesMut::from(&b"HEAD\r\n\r\n"[..]);
        let mut cx = Context::from_waker(Waker::noop());
        let result = upload.coalesce(&mut cx, &mut head).map_err(|e| match e {
            UploadError::Client(e) => e.to_string(),
            UploadError::Backend(e) => format!("backend: {e}"),
        });
        (result, head, upload)
    }

    #[test]
    fn a_body_in_hand_goes_behind_the_head() {
        let (result, head, upload) = coalesced(Body::from("hello"), 5);
        assert!(result.is_ok());
        assert_eq!(&head[..], b"HEAD\r\n\r\nhello");
        assert!(upload.is_done() && !upload.wrote());
    }

    #[test]
    fn a_body_past_the_limit_stays_pending() {
        let big = vec![b'x'; COALESCE_LIMIT + 1];
        let (result, head, upload) = coalesced(Body::from(big), COALESCE_LIMIT as u64 + 1);
        assert!(result.is_ok());
        assert_eq!(&head[..], b"HEAD\r\n\r\n");
        assert!(!upload.is_done());
    }

    #[test]
    fn a_body_that_disagrees_with_its_length_is_the_clients_failure() {
        let (longer, head, _) = coalesced(Body::from("hello world"), 5);
        assert_eq!(
            longer.unwrap_err(),
            "request body longer than its Content-Length"
        );
        // Not a byte of it went behind the head: the backend never sees a wrong body.
        assert_eq!(&head[..], b"HEAD\r\n\r\n");
        let (shorter, _, _) = coalesced(Body::from("abc"), 5);
        assert_eq!(
            shorter.unwrap_err(),
            "request body shorter than its Content-Length"
        );
    }
}
