//! A backend's response body read straight off its pooled connection.
//!
//! The common case costs nothing extra: when the whole body arrived with the head (a small
//! `Content-Length` response), it is split off the read buffer without a copy and the
//! connection goes back to the pool before the client has even been answered. Otherwise the
//! body owns the connection and decodes `Content-Length`, chunked or until-close framing
//! as the client's side pulls frames; the connection returns to the pool at the body's end
//! and is closed if the body is dropped early (the client went away).

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::{head::Framing, pool::Connection};

/// Bytes asked of the socket per read while streaming a body.
const READ_CHUNK: usize = 16 * 1024;

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// The body of a response read over a pooled connection.
#[derive(Debug)]
pub struct PooledBody {
    state: State,
}

#[derive(Debug)]
enum State {
    /// The whole body, already read; the connection is back in the pool.
    Whole(Option<Bytes>),
    /// Still arriving over `connection`.
    Streaming(Box<Streaming>),
    Done,
}

#[derive(Debug)]
struct Streaming {
    connection: Connection,
    decoder: Decoder,
    reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    UntilClose,
    Chunked(Chunk),
}

/// Where a chunked decoder stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line (trailers are dropped).
    Trailers,
}

impl PooledBody {
    /// The body that follows a response head. `connection.buffer` holds whatever was read
    /// past the head; the connection is returned to its pool as soon as the body is read.
    pub(crate) fn new(mut connection: Connection, framing: Framing, reusable: bool) -> Self {
        let decoder = match framing {
            Framing::Empty => {
                connection.release(reusable);
                return PooledBody {
                    state: State::Whole(None),
                };
            }
            Framing::Length(n) if connection.buffer.len() as u64 >= n => {
                let whole = connection.buffer.split_to(n as usize).freeze();
                connection.release(reusable);
                return PooledBody {
                    state: State::Whole(Some(whole).filter(|b| !b.is_empty())),
                };
            }
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::UntilClose => Decoder::UntilClose,
        };
        PooledBody {
            state: State::Streaming(Box::new(Streaming {
                connection,
                decoder,
                reusable,
            })),
        }
    }
}

impl PooledBody {
    /// The body is complete: the connection goes back to its pool (if reusable).
    fn release(&mut self) {
        if let State::Streaming(streaming) = std::mem::replace(&mut self.state, State::Done) {
            let reusable = streaming.reusable;
            streaming.connection.release(reusable);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.state {
            State::Whole(data) => {
                let data = data.take();
                self.state = State::Done;
                Poll::Ready(data.map(|d| Ok(Frame::data(d))))
            }
            State::Done => Poll::Ready(None),
            State::Streaming(streaming) => match ready!(streaming.poll_data(cx)) {
                Ok(Some(data)) if streaming.decoder == Decoder::Length(0) => {
                    // The last bytes: a server that trusts `is_end_stream` will not poll
                    // again, so the connection goes back now rather than closing on drop.
                    self.release();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {
                    self.release();
                    Poll::Ready(None)
                }
                Err(e) => {
                    // Dropping the connection closes it: its state is unknown.
                    self.state = State::Done;
                    Poll::Ready(Some(Err(e)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Done => true,
            State::Streaming(s) => s.decoder == Decoder::Length(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Done => SizeHint::with_exact(0),
            State::Streaming(s) => match s.decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

impl Streaming {
    /// The next piece of body data; `None` at the end of the body.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if let Some(step) = self.decode()? {
                return Poll::Ready(Ok(step));
            }
            let read = ready!(self.connection.poll_read(cx, READ_CHUNK))?;
            if read == 0 {
                return Poll::Ready(match self.decoder {
                    Decoder::UntilClose => {
                        self.decoder = Decoder::Length(0);
                        Ok(None)
                    }
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection mid-body",
                    )),
                });
            }
        }
    }

    /// Decodes from the buffer: `Some(Some(data))`, `Some(None)` at the end, `None` when
    /// more bytes must be read first.
    fn decode(&mut self) -> io::Result<Option<Option<Bytes>>> {
        let buffer = &mut self.connection.buffer;
        loop {
            match self.decoder {
                Decoder::Length(0) => return Ok(Some(None)),
                Decoder::Length(left) => {
                    if buffer.is_empty() {
                        return Ok(None);
                    }
                    let take = (buffer.len() as u64).min(left);
                    self.decoder = Decoder::Length(left - take);
                    return Ok(Some(Some(buffer.split_to(take as usize).freeze())));
                }
                Decoder::UntilClose if buffer.is_empty() => return Ok(None),
                Decoder::UntilClose => return Ok(Some(Some(buffer.split().freeze()))),
                Decoder::Chunked(chunk) => match decode_chunk(chunk, buffer)? {
                    ChunkStep::Next(next) => self.decoder = Decoder::Chunked(next),
                    ChunkStep::Data(data, next) => {
                        self.decoder = Decoder::Chunked(next);
                        return Ok(Some(Some(data)));
                    }
                    ChunkStep::End => {
                        self.decoder = Decoder::Length(0);
                        return Ok(Some(None));
                    }
                    ChunkStep::NeedMore => return Ok(None),
                },
            }
        }
    }
}

enum ChunkStep {
    Next(Chunk),
    Data(Bytes, Chunk),
    End,
    NeedMore,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

/// One step of the chunked decoder over what is buffered.
fn decode_chunk(chunk: Chunk, buffer: &mut BytesMut) -> io::Result<ChunkStep> {
    match chunk {
        Chunk::Size => {
            let Some(line) = take_line(buffer)? else {
                return Ok(ChunkStep::NeedMore);
            };
            let digits = line[..].split(|b| *b == b';').next().unwrap_or_default();
            let digits = std::str::from_utf8(digits)
                .map_err(|_| malformed("chunk size"))?
                .trim();
            let size = u64::from_str_radix(digits, 16).map_err(|_| malformed("chunk size"))?;
            Ok(ChunkStep::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buffer.is_empty() {
                return Ok(ChunkStep::NeedMore);
            }
            let take = (buffer.len() as u64).min(left);
            let data = buffer.split_to(take as usize).freeze();
            let next = if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            Ok(ChunkStep::Data(data, next))
        }
        Chunk::DataEnd => {
            if buffer.len() < 2 {
                return Ok(ChunkStep::NeedMore);
            }
            if &buffer[..2] != b"\r\n" {
                return Err(malformed("missing CRLF after chunk data"));
            }
            buffer.advance(2);
            Ok(ChunkStep::Next(Chunk::Size))
        }
        Chunk::Trailers => match take_line(buffer)? {
            None => Ok(ChunkStep::NeedMore),
            Some(line) if line.is_empty() => Ok(ChunkStep::End),
            Some(_) => Ok(ChunkStep::Next(Chunk::Trailers)),
        },
    }
}

/// Takes one CRLF-terminated line off the buffer (without the CRLF), if complete.
fn take_line(buffer: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match buffer.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buffer.split_to(end);
            buffer.advance(2);
            Ok(Some(line))
        }
        None if buffer.len() > MAX_CHUNK_LINE => Err(malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the chunked decoder over `wire`, fed in pieces of `step` bytes.
    fn dechunk(wire: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        let mut chunk = Chunk::Size;
        let mut fed = 0;
        loop {
            match decode_chunk(chunk, &mut buffer)? {
                ChunkStep::Next(next) => chunk = next,
                ChunkStep::Data(data, next) => {
                    out.extend_from_slice(&data);
                    chunk = next;
                }
                ChunkStep::End => return Ok(out),
                ChunkStep::NeedMore if fed >= wire.len() => {
                    return Err(io::ErrorKind::UnexpectedEof.into())
                }
                ChunkStep::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buffer.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(
                dechunk(wire, step).unwrap(),
                b"hello, world!!!",
                "step {step}"
            );
        }
    }

    #[test]
    fn refuses_malformed_chunks() {
        assert!(dechunk(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(dechunk(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(dechunk(&[b'1'; MAX_CHUNK_LINE + 10], 64).is_err());
    }
}
