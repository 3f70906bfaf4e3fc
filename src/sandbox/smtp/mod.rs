//! The simulated SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, and STARTTLS
//! per RFC 3207). This file owns the sockets: accepting under a connection cap, reading lines with a length cap
//! and an idle timeout, the TLS handshake after STARTTLS, collecting DATA (dot-unstuffing, size cap), applying
//! faults and recording the message once per recipient. The conversation is generic over the stream, so plain
//! and TLS connections share every rule. `session.rs` decides what to answer.

mod session;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::session::{Action, HOSTNAME, MAX_MESSAGE_BYTES, Session};
use super::SandboxState;
use super::faults::Verdict;
use crate::domain::ProviderKind;
use crate::domain::contact::mask;

/// RFC 5321 allows 512 bytes per command line; some clients send more with extensions, so allow a little more.
const MAX_COMMAND_LINE: usize = 2048;
/// Longest chunk read at once while collecting DATA; longer lines are simply read in several chunks.
const MAX_DATA_CHUNK: usize = 64 * 1024;
/// A connection silent this long is closed (RFC 5321 suggests 5 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A client that says STARTTLS and never finishes its handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last reply, how long and how much unread input is drained before the socket is closed.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Connections served at once; more are told to come back later.
const MAX_CONNECTIONS: usize = 1024;

/// How the listener does STARTTLS.
#[derive(Clone)]
pub(crate) struct StartTls {
    /// The sandbox's certificate, without ALPN.
    pub acceptor: TlsAcceptor,
    /// Refuse MAIL before STARTTLS (`sandbox.smtp_require_tls`).
    pub required: bool,
}

impl StartTls {
    pub fn new(config: Arc<ServerConfig>, required: bool) -> StartTls {
        StartTls { acceptor: TlsAcceptor::from(config), required }
    }
}

/// Accepts connections until the sandbox shuts down.
pub(crate) async fn serve(listener: TcpListener, state: Arc<SandboxState>, tls: StartTls) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = state.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually EMFILE or a connection reset before accept; back off a little rather than spin.
                tracing::warn!(%error, "sandbox smtp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream.write_all(b"421 4.3.2 Too many connections, try again later\r\n").await;
            });
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &state, &tls).await {
                tracing::debug!(%error, "sandbox smtp connection ended");
            }
            drop(permit);
        });
    }
}

/// How one read ended.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// The peer closed the connection before sending anything more.
    Eof,
    /// A whole line, ending with `\n`.
    Line,
    /// `cap` bytes without a newline, or end of input in the middle of a line.
    Partial,
}

/// Appends up to `cap` bytes to `buf`, stopping after the first `\n`.
async fn read_chunk<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, cap: usize) -> io::Result<Chunk> {
    let start = buf.len();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.len() == start { Chunk::Eof } else { Chunk::Partial });
        }
        let room = cap - (buf.len() - start);
        let window = &available[..available.len().min(room)];
        if let Some(newline) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..=newline]);
            reader.consume(newline + 1);
            return Ok(Chunk::Line);
        }
        let taken = window.len();
        buf.extend_from_slice(window);
        reader.consume(taken);
        if buf.len() - start == cap {
            return Ok(Chunk::Partial);
        }
    }
}

/// Why a connection stops reading.
enum Stop {
    Closed,
    Idle,
    ShuttingDown,
}

/// [`read_chunk`] bounded by the idle timeout and the sandbox's shutdown.
async fn read_or_stop<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
    state: &SandboxState,
) -> io::Result<Result<Chunk, Stop>> {
    tokio::select! {
        _ = state.cancel.cancelled() => Ok(Err(Stop::ShuttingDown)),
        read = tokio::time::timeout(IDLE_TIMEOUT, read_chunk(reader, buf, cap)) => match read {
            Err(_) => Ok(Err(Stop::Idle)),
            Ok(Ok(Chunk::Eof)) => Ok(Err(Stop::Closed)),
            Ok(chunk) => chunk.map(Ok),
        },
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, text: &str) -> io::Result<()> {
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}

/// One connection: the plain dialogue, and after STARTTLS the same dialogue over TLS.
async fn connection(stream: TcpStream, state: &SandboxState, tls: &StartTls) -> io::Result<()> {
    let mut session = Session::new(tls.required);
    let mut plain = BufReader::new(stream);
    send(&mut plain, &format!("220 {HOSTNAME} ESMTP ready\r\n")).await?;
    match dialogue(&mut plain, &mut session, state).await? {
        End::Close => close(plain).await,
        End::StartTls => {
            // Whatever the client pipelined after STARTTLS arrived in plain text and is thrown away, never read
            // as if it came over TLS (the STARTTLS command injection of CVE-2011-0411).
            let stream = plain.into_inner();
            let handshake = tokio::select! {
                _ = state.cancel.cancelled() => return Ok(()),
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)) => handshake,
            };
            let secure = match handshake {
                Ok(Ok(secure)) => secure,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out")),
            };
            session.secured();
            let mut secure = BufReader::new(secure);
            // The session never asks for STARTTLS twice (a second one is 503), so this dialogue only closes.
            dialogue(&mut secure, &mut session, state).await?;
            close(secure).await
        }
    }
}

/// Lingering close: closing with unread input makes the kernel send RST, which can destroy the last reply (a 421
/// or 500) before the client reads it. So send FIN (after TLS close_notify) first and drain what the client
/// still sends.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: BufReader<S>) -> io::Result<()> {
    stream.shutdown().await?;
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
    Ok(())
}

/// How a dialogue ended.
enum End {
    /// The reply is sent; close the connection.
    Close,
    /// `220 Ready to start TLS` is sent; the TLS handshake comes next.
    StartTls,
}

/// Reads commands and answers them until the session closes or starts TLS. `stream` is read through its buffer
/// and written through to the socket (plain or TLS).
async fn dialogue<S>(stream: &mut BufReader<S>, session: &mut Session, state: &SandboxState) -> io::Result<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let chunk = match read_or_stop(stream, &mut line, MAX_COMMAND_LINE, state).await? {
            Ok(chunk) => chunk,
            Err(stop) => return say_goodbye(stream, stop).await.map(|()| End::Close),
        };
        if chunk == Chunk::Partial {
            // Either far too long or cut off by EOF; in both cases the stream cannot be trusted any more.
            send(stream, "500 5.5.2 Error: line too long\r\n").await?;
            return Ok(End::Close);
        }
        let text = String::from_utf8_lossy(&line);
        let refused_before = session.refused_recipients;
        let action = session.command(text.trim_end_matches(['\r', '\n']));
        for _ in refused_before..session.refused_recipients {
            state.stats.rejected(ProviderKind::Smtp);
        }
        match action {
            Action::Reply(reply) => send(stream, &reply).await?,
            Action::Close(reply) => {
                send(stream, &reply).await?;
                return Ok(End::Close);
            }
            Action::StartTls(reply) => {
                send(stream, &reply).await?;
                return Ok(End::StartTls);
            }
            Action::Data(reply) => {
                send(stream, &reply).await?;
                let data = match collect_data(stream, state).await? {
                    Ok(data) => data,
                    Err(stop) => return say_goodbye(stream, stop).await.map(|()| End::Close),
                };
                let reply = finish_message(state, session, data).await;
                send(stream, &reply).await?;
            }
        }
    }
}

async fn say_goodbye<W: AsyncWrite + Unpin>(writer: &mut W, stop: Stop) -> io::Result<()> {
    match stop {
        Stop::Closed => Ok(()),
        Stop::Idle => send(writer, "421 4.4.2 Error: timeout exceeded\r\n").await,
        Stop::ShuttingDown => send(writer, "421 4.3.2 Service shutting down\r\n").await,
    }
}

/// Reads the message after 354 up to the lone `.` line, removing dot-stuffing. `None` inside `Ok` means the
/// message was larger than [`MAX_MESSAGE_BYTES`] (it is read to its end and thrown away).
async fn collect_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    state: &SandboxState,
) -> io::Result<Result<Option<Vec<u8>>, Stop>> {
    let mut data = Vec::new();
    let mut too_big = false;
    let mut line = Vec::with_capacity(1024);
    let mut at_line_start = true;
    loop {
        line.clear();
        let chunk = match read_or_stop(reader, &mut line, MAX_DATA_CHUNK, state).await? {
            Ok(chunk) => chunk,
            Err(stop) => return Ok(Err(stop)),
        };
        if at_line_start && chunk == Chunk::Line && (line == b".\r\n" || line == b".\n") {
            return Ok(Ok((!too_big).then_some(data)));
        }
        let content = if at_line_start && line.starts_with(b".") { &line[1..] } else { &line[..] };
        if !too_big {
            if data.len() + content.len() > MAX_MESSAGE_BYTES {
                too_big = true;
                data = Vec::new();
            } else {
                data.extend_from_slice(content);
            }
        }
        at_line_start = chunk == Chunk::Line;
    }
}

/// Applies faults to a received message and records it once per recipient; returns the reply to DATA.
async fn finish_message(state: &SandboxState, session: &mut Session, data: Option<Vec<u8>>) -> String {
    let envelope = session.take_envelope();
    let recipients = envelope.recipients.len() as u64;
    let rejected = |reply: &str| {
        for _ in 0..recipients {
            state.stats.rejected(ProviderKind::Smtp);
        }
        format!("{reply}\r\n")
    };
    let Some(data) = data else {
        return rejected("552 5.3.4 Error: message size exceeds fixed limit");
    };
    match state.faults.apply(ProviderKind::Smtp).await {
        Verdict::Pass => {}
        Verdict::Retryable => return rejected("451 4.3.0 Error: temporary failure, try again later"),
        Verdict::Permanent => return rejected("550 5.1.1 Error: mailbox unavailable"),
        // 451 rather than 421, which would oblige the server to close the connection.
        Verdict::RateLimited { .. } => return rejected("451 4.7.1 Error: rate limit exceeded, try again later"),
        Verdict::Unregistered => return rejected("550 5.1.1 Error: user unknown"),
    }
    let queue_id = super::http::new_message_id().to_ascii_uppercase();
    let parsed = session::parse_message(&data);
    for recipient in envelope.recipients {
        tracing::debug!(to = %mask(&recipient), "sandbox smtp accepted");
        let mut incoming = parsed.clone();
        incoming.to = recipient;
        incoming.provider_message_id = queue_id.clone();
        state.record.push(ProviderKind::Smtp, incoming);
        state.stats.accepted(ProviderKind::Smtp);
    }
    format!("250 2.0.0 Ok: queued as {queue_id}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn chunks(input: &[u8], cap: usize) -> Vec<(Chunk, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let chunk = read_chunk(&mut reader, &mut buf, cap).await.unwrap();
            if chunk == Chunk::Eof {
                return out;
            }
            out.push((chunk, buf));
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        let got = chunks(b"EHLO a\r\nNOOP\r\n0123456789\r\ntail", 8).await;
        let expected: Vec<(Chunk, &[u8])> = vec![
            (Chunk::Line, b"EHLO a\r\n"),
            (Chunk::Line, b"NOOP\r\n"),
            (Chunk::Partial, b"01234567"),
            (Chunk::Line, b"89\r\n"),
            (Chunk::Partial, b"tail"),
        ];
        assert_eq!(got.len(), expected.len());
        for ((chunk, bytes), (want_chunk, want_bytes)) in got.iter().zip(expected) {
            assert_eq!((chunk, bytes.as_slice()), (&want_chunk, want_bytes));
        }
    }
}
