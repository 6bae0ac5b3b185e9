//! A backend's response body read straight off its pooled connection.
//!
//! The common case costs nothing extra: when the whole body arrived with the head (a small
//! `Content-Length` response), it is split off the read buffer without a copy and the
//! connection goes back to the pool before the client has even been answered. Otherwise the
//! body owns the connection and decodes `Content-Length`, chunked or until-close framing
//! as the client's side pulls frames; the connection returns to the pool at the body's end
//! and is closed if the body is dropped early (the client went away).
//!
//! A backend may answer before it has read the whole request body (an early `413`, or an
//! echo that streams back as it reads): the rest of the upload then goes on as the response
//! body is pulled, both on the same connection, so neither side waits for the other. The
//! connection is reused only if both ended cleanly; an answer that ends before the upload
//! does closes it (its framing would be out of step).

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

use super::{
    head::Framing,
    pool::Connection,
    upload::{Upload, UploadError},
};

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
    /// The rest of the request body, when the answer came before all of it was sent.
    upload: Option<Upload>,
    /// Trailer fields of a chunked body, once the first arrives.
    trailers: Option<HeaderMap>,
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
    /// After the last chunk: trailer lines up to an empty line (passed on as a trailers
    /// frame, see [`keep_trailer`]).
    Trailers,
}

impl PooledBody {
    /// The body that follows a response head. `connection.buffer` holds whatever was read
    /// past the head; the connection is returned to its pool as soon as the body is read.
    /// `upload` is the part of the request body still to be sent, if any.
    pub(crate) fn new(
        mut connection: Connection,
        framing: Framing,
        reusable: bool,
        upload: Option<Upload>,
    ) -> Self {
        // An answer that is complete before the upload is: the upload stops, the connection
        // closes.
        let complete_reusable = reusable && upload.is_none();
        let decoder = match framing {
            Framing::Empty => {
                connection.release(complete_reusable);
                return PooledBody {
                    state: State::Whole(None),
                };
            }
            Framing::Length(n) if connection.buffer.len() as u64 >= n => {
                let whole = connection.buffer.split_to(n as usize).freeze();
                connection.release(complete_reusable);
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
                upload,
                trailers: None,
            })),
        }
    }
}

impl PooledBody {
    /// The body is complete: the connection goes back to its pool (if reusable).
    fn release(&mut self) {
        if let State::Streaming(streaming) = std::mem::replace(&mut self.state, State::Done) {
            let reusable = streaming.reusable && streaming.upload.is_none();
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
                    let trailers = streaming.trailers.take();
                    self.release();
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
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
        self.poll_upload(cx)?;
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

    /// Sends what it can of the rest of the request body. A failed write ends the upload but
    /// not the answer (the backend may have closed its reading side after answering early);
    /// a failure of the client's body ends both.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(upload) = &mut self.upload else {
            return Ok(());
        };
        match upload.poll_write(&mut self.connection.stream, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.upload = None;
                Ok(())
            }
            Poll::Ready(Err(UploadError::Backend(_))) => {
                self.upload = None;
                self.reusable = false;
                Ok(())
            }
            Poll::Ready(Err(UploadError::Client(e))) => Err(io::Error::other(e)),
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
                Decoder::Chunked(chunk) => {
                    match decode_chunk_into(chunk, buffer, Some(&mut self.trailers))? {
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
                    }
                }
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

/// One step of the chunked decoder over what is buffered, trailers dropped.
#[cfg(test)]
fn decode_chunk(chunk: Chunk, buffer: &mut BytesMut) -> io::Result<ChunkStep> {
    decode_chunk_into(chunk, buffer, None)
}

/// One step of the chunked decoder over what is buffered; trailer fields go to `trailers`.
fn decode_chunk_into(
    chunk: Chunk,
    buffer: &mut BytesMut,
    trailers: Option<&mut Option<HeaderMap>>,
) -> io::Result<ChunkStep> {
    match chunk {
        Chunk::Size => {
            let Some(line) = take_line(buffer)? else {
                return Ok(ChunkStep::NeedMore);
            };
            let digits = line[..].split(|b| *b == b';').next().unwrap_or_default();
            let size = chunk_size(digits).ok_or_else(|| malformed("chunk size"))?;
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
            Some(line) => {
                if let Some(trailers) = trailers {
                    keep_trailer(trailers, &line);
                }
                Ok(ChunkStep::Next(Chunk::Trailers))
            }
        },
    }
}

/// Adds one trailer line (`name: value`) to `trailers`. Fields that frame, route or
/// control the connection must not be trailers (RFC 9110 §6.5.1) and are dropped, as is a
/// line that is not a field, and anything past [`super::MAX_RESPONSE_HEADERS`] fields.
fn keep_trailer(trailers: &mut Option<HeaderMap>, line: &[u8]) {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return;
    };
    let Ok(name) = HeaderName::from_bytes(&line[..colon]) else {
        return;
    };
    let value = line[colon + 1..].trim_ascii();
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let forbidden = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::TRAILER,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
    ];
    if forbidden.contains(&name) || crate::semantics::HOP_BY_HOP.contains(&name) {
        return;
    }
    let map = trailers.get_or_insert_with(HeaderMap::new);
    if map.len() < super::MAX_RESPONSE_HEADERS {
        map.append(name, value);
    }
}

/// A chunk size: 1*HEXDIG (RFC 9112 §7.1), with the spaces or tabs allowed before a chunk
/// extension, that fits a `u64`. Not `u64::from_str_radix`, which also takes a leading `+`.
/// A huge size is no allocation: data is passed on as it arrives.
fn chunk_size(digits: &[u8]) -> Option<u64> {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = digits.iter().position(|b| !is_ows(b))?;
    let end = digits.iter().rposition(|b| !is_ows(b))? + 1;
    digits[start..end].iter().try_fold(0u64, |size, b| {
        let digit = (*b as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    })
}

/// Takes one CRLF-terminated line off the buffer (without the CRLF), if complete.
///
/// A line longer than [`MAX_CHUNK_LINE`] is refused whether its CRLF arrived in the same
/// read or not, and so is a bare CR or LF inside a line: a recipient that ends lines at a
/// bare LF would see other chunk boundaries than ALB (RFC 9112 §2.2).
fn take_line(buffer: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match buffer.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_CHUNK_LINE => Err(malformed("line too long")),
        Some(end) if buffer[..end].iter().any(|b| *b == b'\r' || *b == b'\n') => {
            Err(malformed("bare CR or LF in a line"))
        }
        Some(end) => {
            let line = buffer.split_to(end);
            buffer.advance(2);
            Ok(Some(line))
        }
        // A line of MAX_CHUNK_LINE bytes may be buffered with its CR but not yet its LF.
        None if buffer.len() > MAX_CHUNK_LINE + 1 => Err(malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_fields_are_kept_and_framing_ones_dropped() {
        let mut buffer =
            BytesMut::from(&b"x-checksum: abc \r\ncontent-length: 9\r\nnot a field\r\n\r\n"[..]);
        let mut trailers = None;
        let mut chunk = Chunk::Trailers;
        loop {
            match decode_chunk_into(chunk, &mut buffer, Some(&mut trailers)).unwrap() {
                ChunkStep::Next(next) => chunk = next,
                ChunkStep::End => break,
                _ => panic!("only trailer lines here"),
            }
        }
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
    }

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

/// Property tests of the chunked decoder: arbitrary bytes, valid encodings of random bodies
/// with extensions and trailers, and those encodings mutated (bytes inserted, deleted,
/// flipped or duplicated, CRLF turned into LF or CR, chunk sizes inflated), each fed whole
/// and cut at arbitrary points as reads would cut it. Case counts: [`super::fuzz_cases`].
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::upstream::mutation::{apply as apply_bytes, byte_mutation, crlfs, ByteMutation};
    use crate::upstream::{fuzz_cases, head::fuzz::short};

    /// What decoding came to; any refusal is `Refused`.
    #[derive(Debug, PartialEq)]
    enum Decoded {
        /// Out of input, with the data decoded so far.
        Incomplete(Vec<u8>),
        Refused,
        /// The body, and the bytes after its end (the next response).
        Done {
            body: Vec<u8>,
            rest: Vec<u8>,
        },
    }

    /// Runs `decode_chunk` over `wire` cut at `cuts`, as `Streaming::decode` does, and checks
    /// on every step what the decoder promises:
    /// - each step but `NeedMore` consumes at least one byte, so decoding ends within
    ///   input length + pieces + 1 steps (no hang whatever the bytes);
    /// - it never allocates: the buffer's capacity never grows in a step (a huge chunk
    ///   size is streamed, not reserved);
    /// - when it asks for more, what it holds undecoded is bounded: a partial line of at
    ///   most `MAX_CHUNK_LINE + 1` bytes, less than a CRLF, or nothing inside chunk data.
    fn decode(wire: &[u8], cuts: &[usize]) -> Decoded {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();
        let bound = wire.len() + points.len() + 1;
        let mut points = points.into_iter();
        let mut buffer = BytesMut::new();
        let mut chunk = Chunk::Size;
        let mut body = Vec::new();
        let mut fed = 0;
        let mut steps = 0;
        loop {
            let (len, capacity) = (buffer.len(), buffer.capacity());
            let step = decode_chunk(chunk, &mut buffer);
            steps += 1;
            assert!(steps <= bound, "{steps} steps for {} bytes", wire.len());
            assert!(buffer.capacity() <= capacity, "the decoder allocated");
            match step {
                Err(_) => return Decoded::Refused,
                Ok(ChunkStep::NeedMore) => {
                    assert_eq!(buffer.len(), len);
                    let held = match chunk {
                        Chunk::Size | Chunk::Trailers => MAX_CHUNK_LINE + 1,
                        Chunk::DataEnd => 1,
                        Chunk::Data(_) => 0,
                    };
                    assert!(len <= held, "{len} bytes held in {chunk:?}");
                    let Some(end) = points.next() else {
                        return Decoded::Incomplete(body);
                    };
                    buffer.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Ok(ChunkStep::Next(next)) => {
                    assert!(buffer.len() < len);
                    chunk = next;
                }
                Ok(ChunkStep::Data(data, next)) => {
                    assert!(!data.is_empty() && buffer.len() < len);
                    body.extend_from_slice(&data);
                    chunk = next;
                }
                Ok(ChunkStep::End) => {
                    assert!(buffer.len() < len);
                    let mut rest = buffer.to_vec();
                    rest.extend_from_slice(&wire[fed..]);
                    return Decoded::Done { body, rest };
                }
            }
        }
    }

    /// The expected outcome: RFC 9112 §7.1 written out over the whole input, independently
    /// of `decode_chunk`: hex sizes that fit a `u64` (spaces or tabs before an extension),
    /// CRLF line ends with no bare CR or LF in a line, lines of at most `MAX_CHUNK_LINE`,
    /// CRLF after each chunk's data, trailer lines up to a blank line.
    fn model(wire: &[u8]) -> Decoded {
        enum Line<'a> {
            Complete(&'a [u8]),
            Incomplete,
            Refused,
        }
        fn line(rest: &[u8]) -> Line<'_> {
            match rest.windows(2).position(|w| w == b"\r\n") {
                None if rest.len() > MAX_CHUNK_LINE + 1 => Line::Refused,
                None => Line::Incomplete,
                Some(end) if end > MAX_CHUNK_LINE => Line::Refused,
                Some(end) if rest[..end].contains(&b'\r') || rest[..end].contains(&b'\n') => {
                    Line::Refused
                }
                Some(end) => Line::Complete(&rest[..end]),
            }
        }
        let mut at = 0;
        let mut body = Vec::new();
        loop {
            let size_line = match line(&wire[at..]) {
                Line::Complete(l) => l,
                Line::Incomplete => return Decoded::Incomplete(body),
                Line::Refused => return Decoded::Refused,
            };
            at += size_line.len() + 2;
            let digits = size_line.split(|b| *b == b';').next().unwrap();
            let digits = std::str::from_utf8(digits)
                .unwrap_or("!")
                .trim_matches([' ', '\t']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Decoded::Refused;
            }
            let Ok(size) = u64::from_str_radix(digits, 16) else {
                return Decoded::Refused;
            };
            if size == 0 {
                loop {
                    match line(&wire[at..]) {
                        Line::Complete(l) => {
                            at += l.len() + 2;
                            if l.is_empty() {
                                let rest = wire[at..].to_vec();
                                return Decoded::Done { body, rest };
                            }
                        }
                        Line::Incomplete => return Decoded::Incomplete(body),
                        Line::Refused => return Decoded::Refused,
                    }
                }
            }
            let left = (wire.len() - at) as u64;
            if left < size {
                body.extend_from_slice(&wire[at..]);
                return Decoded::Incomplete(body);
            }
            body.extend_from_slice(&wire[at..at + size as usize]);
            at += size as usize;
            match &wire[at..] {
                [] | [_] => return Decoded::Incomplete(body),
                [b'\r', b'\n', ..] => at += 2,
                _ => return Decoded::Refused,
            }
        }
    }

    /// The model's outcome, whole, cut at `cuts`, and (short inputs) one byte per read.
    fn check_cuts(wire: &[u8], cuts: &[usize]) -> Result<Decoded, TestCaseError> {
        let text = short(&String::from_utf8_lossy(wire));
        let whole = decode(wire, &[]);
        let cut = decode(wire, cuts);
        prop_assert!(
            cut == whole,
            "{} cut at {:?}: {} whole: {}",
            text,
            cuts,
            short(&cut),
            short(&whole)
        );
        if wire.len() <= 600 {
            let bytewise: Vec<usize> = (0..wire.len()).collect();
            let bytewise = decode(wire, &bytewise);
            prop_assert!(
                bytewise == whole,
                "{} byte by byte: {} whole: {}",
                text,
                short(&bytewise),
                short(&whole)
            );
        }
        let expected = model(wire);
        prop_assert!(
            expected == whole,
            "{} expected {} got {}",
            text,
            short(&expected),
            short(&whole)
        );
        Ok(whole)
    }

    /// How one chunk-size line is written: hex case, leading zeros, spaces before an
    /// extension, an extension.
    #[derive(Debug, Clone)]
    struct SizeStyle {
        upper: bool,
        zeros: usize,
        space: &'static str,
        extension: Option<String>,
    }

    fn size_style() -> impl Strategy<Value = SizeStyle> {
        (
            any::<bool>(),
            // Now and then a line about MAX_CHUNK_LINE long.
            prop_oneof![
                20 => 0usize..4,
                1 => MAX_CHUNK_LINE - 24..MAX_CHUNK_LINE + 8,
            ],
            prop::sample::select(&["", " ", "\t", " \t "][..]),
            prop::option::of("[a-z]{1,6}(=[a-z0-9\"]{0,6})?"),
        )
            .prop_map(|(upper, zeros, space, extension)| SizeStyle {
                upper,
                zeros,
                space,
                extension,
            })
    }

    fn size_line(size: usize, style: &SizeStyle) -> String {
        let digits = if style.upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        let mut line = format!("{}{digits}", "0".repeat(style.zeros));
        if let Some(extension) = &style.extension {
            line.push_str(style.space);
            line.push(';');
            line.push_str(extension);
        }
        line.push_str("\r\n");
        line
    }

    /// A valid chunked encoding of `body` in pieces of `sizes` (cycled), its last chunk,
    /// `trailers`, and the blank line; with the length of its longest size line.
    fn encode(
        body: &[u8],
        sizes: &[usize],
        styles: &[SizeStyle],
        trailers: &[(String, String)],
    ) -> (Vec<u8>, usize) {
        let mut wire = Vec::new();
        let mut longest = 0;
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let size = sizes[i % sizes.len()].min(body.len() - at);
            let line = size_line(size, &styles[i % styles.len()]);
            longest = longest.max(line.len() - 2);
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(&body[at..at + size]);
            wire.extend_from_slice(b"\r\n");
            at += size;
            i += 1;
        }
        let line = size_line(0, &styles[i % styles.len()]);
        longest = longest.max(line.len() - 2);
        wire.extend_from_slice(line.as_bytes());
        for (name, value) in trailers {
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        (wire, longest)
    }

    /// A body, its encoding, and whether every chunk line is within `MAX_CHUNK_LINE`.
    fn encoding() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, bool)> {
        (
            prop::collection::vec(any::<u8>(), 0..2000),
            prop::collection::vec(1usize..300, 1..8),
            prop::collection::vec(size_style(), 1..4),
            prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,20}"), 0..3),
        )
            .prop_map(|(body, sizes, styles, trailers)| {
                let (wire, longest) = encode(&body, &sizes, &styles, &trailers);
                (body, wire, longest <= MAX_CHUNK_LINE)
            })
    }

    /// One structured change to an encoding: a byte-level one, or a chunk-size line's
    /// digits replaced by these (huge, or past `u64`; the `k`th line, wrapping).
    #[derive(Debug, Clone)]
    enum Mutation {
        Bytes(ByteMutation),
        Inflate(usize, String),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            6 => byte_mutation(b"\r\n ;\t0fF+-").prop_map(Mutation::Bytes),
            1 => (
                any::<usize>(),
                prop_oneof![
                    (1u64 << 20..=u64::MAX).prop_map(|n| format!("{n:x}")),
                    "[1-9a-f][0-9a-f]{16,20}",
                ]
            )
                .prop_map(|(k, digits)| Mutation::Inflate(k, digits)),
        ]
    }

    fn apply(wire: &mut Vec<u8>, mutation: &Mutation) {
        match mutation {
            Mutation::Bytes(m) => apply_bytes(wire, m),
            Mutation::Inflate(k, digits) => {
                let ends = crlfs(wire);
                if ends.is_empty() {
                    return;
                }
                // The first line is a size line; later ones may be data that ends in CRLF,
                // which is a mutation too.
                let i = k % ends.len();
                let start = if i == 0 { 0 } else { ends[i - 1] + 2 };
                let end = wire[start..ends[i]]
                    .iter()
                    .position(|b| *b == b';')
                    .map_or(ends[i], |p| start + p);
                wire.splice(start..end, digits.bytes());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        /// Arbitrary bytes, alone or after a valid chunk: never a panic or a hang, bounded
        /// memory (see [`decode`]), the same outcome however they are cut.
        #[test]
        fn chunked_decoder_takes_arbitrary_bytes(
            prefix in any::<bool>(),
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut wire = if prefix { b"5\r\nhello\r\n".to_vec() } else { Vec::new() };
            wire.extend_from_slice(&bytes);
            check_cuts(&wire, &cuts)?;
        }

        /// A valid chunked encoding of a random body (extensions, leading zeros, either hex
        /// case, trailers), followed by the next response's bytes and cut anywhere, decodes
        /// to exactly the body and stops exactly at its end.
        #[test]
        fn chunked_decoder_round_trips_bodies(
            (body, wire, lines_fit) in encoding(),
            next in prop::collection::vec(any::<u8>(), 0..40),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut input = wire;
            input.extend_from_slice(&next);
            let decoded = check_cuts(&input, &cuts)?;
            if lines_fit {
                prop_assert_eq!(decoded, Decoded::Done { body, rest: next });
            } else {
                // Leading zeros made a line longer than MAX_CHUNK_LINE: refused, if valid.
                prop_assert_eq!(decoded, Decoded::Refused);
            }
        }

        /// Mutated valid encodings, chunk sizes inflated to huge or past `u64`: never a
        /// panic or a hang, no allocation for a huge size, bounded memory, the same outcome
        /// however they are cut; what is decoded never exceeds what was read.
        #[test]
        fn chunked_decoder_survives_mutations(
            (_body, wire, _) in encoding(),
            mutations in prop::collection::vec(mutation(), 1..4),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut wire = wire;
            for m in &mutations {
                apply(&mut wire, m);
            }
            match check_cuts(&wire, &cuts)? {
                Decoded::Incomplete(body) => prop_assert!(body.len() <= wire.len()),
                Decoded::Done { body, rest } => prop_assert!(body.len() + rest.len() <= wire.len()),
                Decoded::Refused => {}
            }
        }

        /// A huge chunk size is streamed as its data arrives, never reserved; one that does
        /// not fit a `u64` is refused.
        #[test]
        fn chunked_decoder_streams_huge_sizes(
            size in 1u64 << 20..=u64::MAX,
            data in prop::collection::vec(any::<u8>(), 0..4096),
            overflow in "[1-9a-f][0-9a-f]{16}",
        ) {
            let mut wire = format!("{size:x}\r\n").into_bytes();
            wire.extend_from_slice(&data);
            prop_assert_eq!(decode(&wire, &[wire.len() - data.len()]), Decoded::Incomplete(data));
            let mut buffer = BytesMut::from(format!("{overflow}\r\n").as_bytes());
            prop_assert!(decode_chunk(Chunk::Size, &mut buffer).is_err());
        }
    }

    /// What the properties found, kept as plain regressions.
    #[test]
    fn regressions() {
        // A chunk-size line longer than MAX_CHUNK_LINE was taken when its CRLF came in the
        // same read, refused when it did not.
        let mut long = vec![b'0'; MAX_CHUNK_LINE + 10];
        long.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&long, &[]), Decoded::Refused);
        assert_eq!(decode(&long, &[100, 5000]), Decoded::Refused);
        // A line of exactly MAX_CHUNK_LINE bytes whose LF comes in the next read.
        let mut exact = vec![b'0'; MAX_CHUNK_LINE - 1];
        exact.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
        let done = Decoded::Done {
            body: b"x".to_vec(),
            rest: Vec::new(),
        };
        assert_eq!(decode(&exact, &[MAX_CHUNK_LINE + 1]), done);
        // A sign, or a bare CR or LF in a line (`str::trim` took them), is not a chunk size.
        for wire in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\n\r\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx: 1\n\r\n\r\n",
        ] {
            assert_eq!(
                decode(wire, &[]),
                Decoded::Refused,
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
