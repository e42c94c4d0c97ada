//! The status socket: a Unix domain socket (0600, in a 0700 directory; default
//! `STORE/run/status.sock`) served by a tokio runtime on its own thread inside the daemon.
//!
//! Protocol (version 1): newline-delimited JSON. A request is one line
//! `{"v":1,"cmd":"status"|"models"|"watch"|"import"|"gc",…}` (see docs/STATUS.md for
//! `interval_ms` and `paths`); every answer is one line with
//! `"v":1` and `"ok"`: `{"v":1,"ok":true,"cmd":"status","status":{…}}`,
//! `{"v":1,"ok":true,"cmd":"models","models":[…]}`, and for `watch` one such status line every
//! `interval_ms` (default 1000, clamped to 50..=3600000) until the client closes. Errors:
//! `{"v":1,"ok":false,"code":"…","error":"…"}`; a bad line leaves the connection usable, a line
//! longer than [`MAX_LINE`] or one cut off by EOF ends it. Peers of another uid are refused
//! (SO_PEERCRED), and at most [`MAX_CLIENTS`] connections are served at once.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use store::import::ImportOptions;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

use crate::report::PROTOCOL_VERSION;
use crate::reporter::Reporter;

/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;
/// Connections served at once; more are told `busy` and closed.
pub const MAX_CLIENTS: usize = 512;
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const MIN_INTERVAL_MS: u64 = 50;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// A connection that sends no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not take an answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `sun_path` holds 108 bytes with the NUL; longer paths fall back to a runtime dir.
const MAX_SOCKET_PATH: usize = 100;

pub const RUN_DIR: &str = "run";
pub const SOCKET_FILE: &str = "status.sock";

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Models,
    Watch {
        interval: Duration,
    },
    /// Import these caches into the mounted store (absolute paths, read by the daemon).
    Import {
        paths: Vec<PathBuf>,
        options: ImportOptions,
    },
    /// Collect garbage in the mounted store (what `mlxfs gc` does offline).
    Gc,
}

/// At most this many paths in one import request.
pub const MAX_IMPORT_PATHS: usize = 256;

/// Why a request line was refused; `code()` is the stable `code` of the error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not JSON: {0}")]
    BadJson(String),
    #[error("request must be a JSON object")]
    NotObject,
    #[error("request has no protocol version \"v\" (this daemon speaks {PROTOCOL_VERSION})")]
    NoVersion,
    #[error("unsupported protocol version {0} (this daemon speaks {PROTOCOL_VERSION})")]
    BadVersion(String),
    #[error("request has no \"cmd\" (status, models, watch, import or gc)")]
    NoCommand,
    #[error("unknown command {0:?} (status, models, watch, import or gc)")]
    UnknownCommand(String),
    #[error("interval_ms must be a positive integer of milliseconds")]
    BadInterval,
    #[error("import needs \"paths\": 1 to {MAX_IMPORT_PATHS} absolute paths")]
    BadPaths,
    #[error("request line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("request cut off before its newline")]
    Partial,
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadJson(_) | RequestError::NotObject => "bad_json",
            RequestError::NoVersion | RequestError::BadVersion(_) => "unsupported_version",
            RequestError::NoCommand | RequestError::UnknownCommand(_) => "unknown_command",
            RequestError::BadInterval | RequestError::BadPaths => "bad_request",
            RequestError::TooLong => "line_too_long",
            RequestError::Partial => "partial_request",
        }
    }
}

/// Shortens `s` to at most `max` bytes, cutting at a char boundary: a request may quote any
/// UTF-8 back at us, and `String::truncate` panics inside a multi-byte char.
fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_LINE {
        return Err(RequestError::TooLong);
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        let mut msg = e.to_string();
        clip(&mut msg, 200);
        RequestError::BadJson(msg)
    })?;
    let obj = value.as_object().ok_or(RequestError::NotObject)?;
    match obj.get("v") {
        None => return Err(RequestError::NoVersion),
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            let mut shown = v.to_string();
            clip(&mut shown, 40);
            return Err(RequestError::BadVersion(shown));
        }
    }
    let cmd = match obj.get("cmd") {
        None => return Err(RequestError::NoCommand),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            let mut shown = other.to_string();
            clip(&mut shown, 40);
            return Err(RequestError::UnknownCommand(shown));
        }
    };
    match cmd {
        "status" => Ok(Request::Status),
        "models" => Ok(Request::Models),
        "gc" => Ok(Request::Gc),
        "import" => {
            let paths = obj
                .get("paths")
                .and_then(Value::as_array)
                .filter(|p| !p.is_empty() && p.len() <= MAX_IMPORT_PATHS)
                .ok_or(RequestError::BadPaths)?;
            let paths = paths
                .iter()
                .map(|p| p.as_str().map(PathBuf::from).filter(|p| p.is_absolute()))
                .collect::<Option<Vec<_>>>()
                .ok_or(RequestError::BadPaths)?;
            let flag = |name: &str| match obj.get(name) {
                None | Some(Value::Null) => Ok(false),
                Some(v) => v.as_bool().ok_or(RequestError::BadPaths),
            };
            Ok(Request::Import {
                paths,
                options: ImportOptions {
                    verify_sources: flag("verify_sources")?,
                    sync: flag("sync")?,
                    ..ImportOptions::default()
                },
            })
        }
        "watch" => {
            let ms = match obj.get("interval_ms") {
                None | Some(Value::Null) => DEFAULT_INTERVAL_MS,
                Some(v) => match v.as_u64() {
                    Some(ms) if ms > 0 => ms,
                    _ => return Err(RequestError::BadInterval),
                },
            };
            Ok(Request::Watch {
                interval: Duration::from_millis(ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS)),
            })
        }
        other => {
            let mut shown = other.to_string();
            clip(&mut shown, 40);
            Err(RequestError::UnknownCommand(shown))
        }
    }
}

/// One error answer line (with its newline).
pub fn error_line(code: &str, message: &str) -> String {
    let mut s =
        json!({"v": PROTOCOL_VERSION, "ok": false, "code": code, "error": message}).to_string();
    s.push('\n');
    s
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line is in the buffer (newline and a trailing `\r` removed).
    Complete,
    /// The peer closed with nothing pending.
    Eof,
    /// The peer closed in the middle of a line.
    Partial,
    /// More than `max` bytes came without a newline; the rest was not read.
    TooLong,
}

/// Reads one line of at most `max` bytes into `buf` (cleared first), never buffering more.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Partial
            });
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if buf.len() + i > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(&available[..i]);
                reader.consume(i + 1);
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                return Ok(Line::Complete);
            }
            None => {
                let n = available.len();
                if buf.len() + n > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(available);
                reader.consume(n);
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        writer.write_all(line.as_bytes()).await?;
        writer.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}

fn ok_line(cmd: &str, key: &str, payload: &str) -> String {
    // The payload is already JSON; splice it rather than re-encoding a large value.
    format!("{{\"v\":{PROTOCOL_VERSION},\"ok\":true,\"cmd\":\"{cmd}\",\"{key}\":{payload}}}\n")
}

/// What a connection needs to answer.
pub trait Source: Send + Sync + 'static {
    fn status_json(&self) -> Arc<String>;
    fn models_json(&self) -> String;
    /// Runs an import in the daemon, counting bytes into `progress`; the report as JSON.
    fn import(
        &self,
        paths: Vec<PathBuf>,
        options: ImportOptions,
        progress: Arc<AtomicU64>,
    ) -> Result<String, String> {
        let _ = (paths, options, progress);
        Err("this daemon cannot import".into())
    }
    /// Runs gc in the daemon, counting bytes copied into `progress`; the report as JSON.
    fn gc(&self, progress: Arc<AtomicU64>) -> Result<String, String> {
        let _ = progress;
        Err("this daemon cannot collect garbage".into())
    }
}

impl Source for Reporter {
    fn status_json(&self) -> Arc<String> {
        Reporter::status_json(self)
    }
    fn models_json(&self) -> String {
        serde_json::to_string(&self.models()).unwrap_or_else(|_| "[]".into())
    }
    fn import(
        &self,
        paths: Vec<PathBuf>,
        options: ImportOptions,
        progress: Arc<AtomicU64>,
    ) -> Result<String, String> {
        Reporter::import(self, &paths, options, &progress)
    }
    fn gc(&self, progress: Arc<AtomicU64>) -> Result<String, String> {
        Reporter::gc(self, &progress)
    }
}

/// Serves one connection's requests until it closes or misbehaves.
pub async fn serve_connection<S, R, W>(source: Arc<S>, reader: R, mut writer: W) -> io::Result<()>
where
    S: Source + ?Sized,
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::with_capacity(8192, reader);
    let mut buf = Vec::new();
    loop {
        let line =
            match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, &mut buf, MAX_LINE))
                .await
            {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
        match line {
            Line::Eof => return Ok(()),
            Line::Partial | Line::TooLong => {
                let e = if line == Line::Partial {
                    RequestError::Partial
                } else {
                    RequestError::TooLong
                };
                let _ = send(&mut writer, &error_line(e.code(), &e.to_string())).await;
                return Ok(());
            }
            Line::Complete => {}
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_request(&buf) {
            Err(e) => send(&mut writer, &error_line(e.code(), &e.to_string())).await?,
            Ok(Request::Status) => {
                let json = source.status_json();
                send(&mut writer, &ok_line("status", "status", &json)).await?
            }
            Ok(Request::Models) => {
                send(
                    &mut writer,
                    &ok_line("models", "models", &source.models_json()),
                )
                .await?
            }
            Ok(Request::Watch { interval }) => {
                return watch(source, reader, writer, interval).await;
            }
            Ok(Request::Import { paths, options }) => {
                import(source.clone(), &mut writer, paths, options).await?
            }
            Ok(Request::Gc) => gc(source.clone(), &mut writer).await?,
        }
    }
}

/// Runs an import on a blocking thread, sending `{"progress": bytes}` lines every quarter
/// second and then the report (or an error line).
async fn import<S, W>(
    source: Arc<S>,
    writer: &mut W,
    paths: Vec<PathBuf>,
    options: ImportOptions,
) -> io::Result<()>
where
    S: Source + ?Sized,
    W: AsyncWrite + Unpin,
{
    let progress = Arc::new(AtomicU64::new(0));
    let counter = progress.clone();
    let work = move || source.import(paths, options, counter);
    run_job("import", writer, progress, work).await
}

/// Runs gc on a blocking thread, with progress lines (bytes copied) like [`import`].
async fn gc<S, W>(source: Arc<S>, writer: &mut W) -> io::Result<()>
where
    S: Source + ?Sized,
    W: AsyncWrite + Unpin,
{
    let progress = Arc::new(AtomicU64::new(0));
    let counter = progress.clone();
    run_job("gc", writer, progress, move || source.gc(counter)).await
}

/// Runs `work` on a blocking thread, sending `{"cmd":CMD,"progress":N}` every quarter second
/// and then `{"cmd":CMD,"report":…}`, or the error `CMD_failed`.
async fn run_job<W>(
    cmd: &str,
    writer: &mut W,
    progress: Arc<AtomicU64>,
    work: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut job = tokio::task::spawn_blocking(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            done = &mut job => break done,
            _ = tick.tick() => {
                let bytes = progress.load(Ordering::Relaxed);
                // A client that went away does not stop the job; it only stops the lines.
                let _ = send(writer, &ok_line(cmd, "progress", &bytes.to_string())).await;
            }
        }
    };
    let failed = format!("{cmd}_failed");
    match outcome {
        Ok(Ok(report)) => send(writer, &ok_line(cmd, "report", &report)).await,
        Ok(Err(message)) => send(writer, &error_line(&failed, &message)).await,
        Err(e) => send(writer, &error_line(&failed, &e.to_string())).await,
    }
}

/// Sends a status line every `interval` until the client goes away (EOF, error, or not reading).
async fn watch<S, R, W>(
    source: Arc<S>,
    mut reader: BufReader<R>,
    mut writer: W,
    interval: Duration,
) -> io::Result<()>
where
    S: Source + ?Sized,
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let json = source.status_json();
                send(&mut writer, &ok_line("watch", "status", &json)).await?;
            }
            read = reader.fill_buf() => {
                // Anything the client sends while watching is ignored; EOF ends the watch.
                let n = read?.len();
                if n == 0 {
                    return Ok(());
                }
                reader.consume(n);
            }
        }
    }
}

/// The uid of the process at the other end of `stream`.
#[cfg(target_os = "linux")]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(not(target_os = "linux"))]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    stream.peer_cred().map(|c| c.uid())
}

/// Where the socket of the store at `store` goes: `STORE/run/status.sock`, or, when that path
/// is too long for a socket address, `$XDG_RUNTIME_DIR/mlxfs/<hash>.sock` (else
/// `/tmp/mlxfs-<uid>/<hash>.sock`).
pub fn default_socket_path(store: &Path) -> PathBuf {
    let preferred = store.join(RUN_DIR).join(SOCKET_FILE);
    if preferred.as_os_str().len() <= MAX_SOCKET_PATH {
        return preferred;
    }
    let hash = path_hash(store.as_os_str().as_encoded_bytes());
    let uid = unsafe { libc::geteuid() };
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|p| p.join("mlxfs"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/mlxfs-{uid}")));
    base.join(format!("{}.sock", &hash[..16]))
}

fn path_hash(bytes: &[u8]) -> String {
    // FNV-1a is enough to name a socket per store path; no need for a crypto hash here.
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:016x}", h.rotate_left(29) ^ bytes.len() as u64)
}

/// Makes `dir` a 0700 directory owned by us (refusing a symlink or someone else's).
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir.parent().unwrap_or(dir))?;
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        }
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to us (uid {uid})",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Binds the socket at `path` (in a private directory, mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("socket path has no directory"))?;
    private_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )))
        }
        // Only the daemon holding the store lock binds here: anything left is stale.
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The running server: stop it with [`StatusServer::stop`] (also on drop).
pub struct StatusServer {
    path: PathBuf,
    shutdown: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.notify_one();
            let _ = thread.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `path` and serves `source` on a new thread (its own tokio runtime); also serves
/// Prometheus text on `metrics` when given.
pub fn start(
    path: &Path,
    source: Arc<Reporter>,
    metrics: Option<std::net::TcpListener>,
) -> io::Result<StatusServer> {
    let listener = bind(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("mlxfs-status")
        .build()?;
    let shutdown = Arc::new(Notify::new());
    let stop = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("mlxfs-status".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "status socket");
                        return;
                    }
                };
                if let Some(tcp) = metrics {
                    match tokio::net::TcpListener::from_std(tcp) {
                        Ok(tcp) => {
                            tokio::spawn(crate::prometheus::serve(tcp, source.clone()));
                        }
                        Err(e) => tracing::error!(error = %e, "metrics listener"),
                    }
                }
                accept_loop(listener, source, stop).await;
            });
            // Dropping the runtime cancels the connections still open.
        })?;
    Ok(StatusServer {
        path: path.to_path_buf(),
        shutdown,
        thread: Some(thread),
    })
}

async fn accept_loop(listener: UnixListener, source: Arc<Reporter>, stop: Arc<Notify>) {
    let me = unsafe { libc::geteuid() };
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = tokio::select! {
            _ = stop.notified() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "status socket accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match peer_uid(&stream) {
            Ok(uid) if uid == me => {}
            Ok(uid) => {
                tracing::warn!(uid, "status socket: refusing a client of another uid");
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(
                        error_line("forbidden", "this socket serves only its owner").as_bytes(),
                    ),
                )
                .await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status socket: cannot check the peer's uid");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(error_line("busy", "too many clients").as_bytes()),
                )
                .await;
            });
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            if let Err(e) = serve_connection(source, reader, writer).await {
                tracing::debug!(error = %e, "status client");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"cmd":"models","v":1,"extra":[1,2]}"#),
            Ok(Request::Models)
        );
        assert_eq!(parse_request(br#"{"v":1,"cmd":"gc"}"#), Ok(Request::Gc));
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"watch"}"#),
            Ok(Request::Watch {
                interval: Duration::from_millis(DEFAULT_INTERVAL_MS)
            })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"watch","interval_ms":250}"#),
            Ok(Request::Watch {
                interval: Duration::from_millis(250)
            })
        );
        // Clamped, not refused.
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"watch","interval_ms":1}"#),
            Ok(Request::Watch {
                interval: Duration::from_millis(MIN_INTERVAL_MS)
            })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"watch","interval_ms":99999999999}"#),
            Ok(Request::Watch {
                interval: Duration::from_millis(MAX_INTERVAL_MS)
            })
        );
    }

    #[test]
    fn garbage_is_refused_with_a_code() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "bad_json"),
            (b"\xff\xfe\x00garbage", "bad_json"),
            (b"{\"v\":1,\"cmd\":\"sta", "bad_json"),
            (b"[1,2,3]", "bad_json"),
            (b"\"status\"", "bad_json"),
            (b"{}", "unsupported_version"),
            (b"{\"cmd\":\"status\"}", "unsupported_version"),
            (b"{\"v\":2,\"cmd\":\"status\"}", "unsupported_version"),
            (b"{\"v\":\"1\",\"cmd\":\"status\"}", "unsupported_version"),
            (b"{\"v\":1.5,\"cmd\":\"status\"}", "unsupported_version"),
            (b"{\"v\":-1,\"cmd\":\"status\"}", "unsupported_version"),
            (b"{\"v\":1}", "unknown_command"),
            (b"{\"v\":1,\"cmd\":\"rm -rf\"}", "unknown_command"),
            (b"{\"v\":1,\"cmd\":7}", "unknown_command"),
            (
                b"{\"v\":1,\"cmd\":\"watch\",\"interval_ms\":0}",
                "bad_request",
            ),
            (
                b"{\"v\":1,\"cmd\":\"watch\",\"interval_ms\":-5}",
                "bad_request",
            ),
            (
                b"{\"v\":1,\"cmd\":\"watch\",\"interval_ms\":\"fast\"}",
                "bad_request",
            ),
        ];
        for (line, code) in cases {
            let err = parse_request(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                err.code(),
                *code,
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
        let long = vec![b' '; MAX_LINE + 1];
        assert_eq!(parse_request(&long), Err(RequestError::TooLong));
        // Deeply nested JSON is an error, not a stack overflow.
        let deep = "[".repeat(60_000);
        assert_eq!(
            parse_request(deep.as_bytes()).unwrap_err().code(),
            "bad_json"
        );
        // Error lines are one line of JSON.
        let e = parse_request(b"{\"v\":1,\"cmd\":\"\\n\\nx\"}").unwrap_err();
        let line = error_line(e.code(), &e.to_string());
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["v"], 1);
    }

    /// Caught by the status_request fuzz target: the shown value of a bad "v" or "cmd" was cut
    /// at byte 40 even inside a multi-byte char, which panicked.
    #[test]
    fn quoted_values_are_clipped_at_char_boundaries() {
        for pad in 0..4 {
            let long = format!("{}{}", "a".repeat(pad), "é".repeat(40));
            for line in [
                format!(r#"{{"v":"{long}","cmd":"status"}}"#),
                format!(r#"{{"v":1,"cmd":"{long}"}}"#),
                format!(r#"{{"v":1,"cmd":["{long}"]}}"#),
            ] {
                let e = parse_request(line.as_bytes()).unwrap_err();
                match &e {
                    RequestError::BadVersion(s) | RequestError::UnknownCommand(s) => {
                        assert!(s.len() <= 40 && s.len() >= 37, "{s:?}")
                    }
                    other => panic!("{line}: {other:?}"),
                }
                let _ = error_line(e.code(), &e.to_string());
            }
        }
        let mut s = "ab".to_string();
        clip(&mut s, 5);
        assert_eq!(s, "ab");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn line_reader_bounds_and_partials() {
        block_on(async {
            let mut buf = Vec::new();
            // Two lines, a CRLF, then a partial one.
            let data: &[u8] = b"one\r\ntwo\nthr";
            let mut r = BufReader::with_capacity(2, data);
            assert_eq!(
                read_line(&mut r, &mut buf, 10).await.unwrap(),
                Line::Complete
            );
            assert_eq!(buf, b"one");
            assert_eq!(
                read_line(&mut r, &mut buf, 10).await.unwrap(),
                Line::Complete
            );
            assert_eq!(buf, b"two");
            assert_eq!(
                read_line(&mut r, &mut buf, 10).await.unwrap(),
                Line::Partial
            );
            assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Eof);

            // Exactly max is fine; one more is too long, with or without a newline later.
            let data = [vec![b'a'; 10], b"\n".to_vec()].concat();
            let mut r = BufReader::with_capacity(4, &data[..]);
            assert_eq!(
                read_line(&mut r, &mut buf, 10).await.unwrap(),
                Line::Complete
            );
            let data = [vec![b'a'; 11], b"\n".to_vec()].concat();
            let mut r = BufReader::with_capacity(4, &data[..]);
            assert_eq!(
                read_line(&mut r, &mut buf, 10).await.unwrap(),
                Line::TooLong
            );
            let data = vec![b'a'; 1 << 20];
            let mut r = BufReader::with_capacity(8192, &data[..]);
            assert_eq!(
                read_line(&mut r, &mut buf, MAX_LINE).await.unwrap(),
                Line::TooLong
            );
            assert!(buf.len() <= MAX_LINE, "never buffers past the bound");
        });
    }

    struct Fixed;
    impl Source for Fixed {
        fn status_json(&self) -> Arc<String> {
            Arc::new(r#"{"read_bytes":1}"#.to_string())
        }
        fn models_json(&self) -> String {
            "[]".into()
        }
    }

    /// Runs a connection over `input` and returns the answer lines.
    fn converse(input: Vec<u8>) -> Vec<Value> {
        block_on(async move {
            let mut out = Vec::new();
            serve_connection(Arc::new(Fixed), &input[..], &mut out)
                .await
                .unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
    }

    /// A source whose gc takes a while and counts progress.
    struct Collecting;
    impl Source for Collecting {
        fn status_json(&self) -> Arc<String> {
            Arc::new("{}".to_string())
        }
        fn models_json(&self) -> String {
            "[]".into()
        }
        fn gc(&self, progress: Arc<AtomicU64>) -> Result<String, String> {
            for _ in 0..6 {
                progress.fetch_add(100, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(r#"{"chunks_removed":3}"#.into())
        }
    }

    #[test]
    fn gc_streams_progress_then_the_report_or_fails_with_a_code() {
        let answers = block_on(async {
            let mut out = Vec::new();
            let input = b"{\"v\":1,\"cmd\":\"gc\"}\n{\"v\":1,\"cmd\":\"status\"}\n";
            serve_connection(Arc::new(Collecting), &input[..], &mut out)
                .await
                .unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        });
        let (report, rest) = answers
            .iter()
            .position(|a| a.get("report").is_some())
            .map(|i| (&answers[i], &answers[i + 1..]))
            .expect("a report line");
        assert!(answers[0]["progress"].is_u64(), "{answers:?}");
        assert!(answers
            .iter()
            .all(|a| a["cmd"] == "gc" || a["cmd"] == "status"));
        assert_eq!(report["report"]["chunks_removed"], 3);
        // The connection serves the next request after the gc.
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0]["cmd"], "status");

        let answers = converse(b"{\"v\":1,\"cmd\":\"gc\"}\n".to_vec());
        let last = answers.last().unwrap();
        assert_eq!(last["ok"], false);
        assert_eq!(last["code"], "gc_failed");
    }

    #[test]
    fn a_connection_survives_bad_lines_and_ends_on_oversized_ones() {
        let answers = converse(
            b"garbage\n\n{\"v\":9,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"models\"}\n"
                .to_vec(),
        );
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert_eq!(answers[0]["code"], "bad_json");
        assert_eq!(answers[1]["code"], "unsupported_version");
        assert_eq!(answers[2]["ok"], true);
        assert_eq!(answers[2]["status"]["read_bytes"], 1);
        assert_eq!(answers[3]["models"], json!([]));

        let mut big = vec![b'x'; 3 * MAX_LINE];
        big.extend(b"\n{\"v\":1,\"cmd\":\"status\"}\n");
        let answers = converse(big);
        assert_eq!(
            answers.len(),
            1,
            "the connection ends after an oversized line"
        );
        assert_eq!(answers[0]["code"], "line_too_long");

        let answers = converse(b"{\"v\":1,\"cmd\":\"sta".to_vec());
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["code"], "partial_request");

        assert!(converse(Vec::new()).is_empty());
    }

    #[test]
    fn watch_streams_until_the_client_closes() {
        block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (sr, sw) = tokio::io::split(server);
            let task = tokio::spawn(serve_connection(Arc::new(Fixed), sr, sw));
            let (cr, mut cw) = tokio::io::split(client);
            cw.write_all(b"{\"v\":1,\"cmd\":\"watch\",\"interval_ms\":50}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(cr).lines();
            for _ in 0..3 {
                let line = lines.next_line().await.unwrap().unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["cmd"], "watch");
                assert_eq!(v["status"]["read_bytes"], 1);
            }
            cw.shutdown().await.unwrap();
            drop(cw);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("watch ends when the client closes")
                .unwrap()
                .unwrap();
        });
    }

    #[test]
    fn socket_path_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_socket_path(dir.path());
        assert_eq!(path, dir.path().join("run/status.sock"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::set_permissions(path.parent().unwrap(), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        let _listener = bind(&path).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode();
        let sock_mode = std::fs::symlink_metadata(&path).unwrap().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(sock_mode & 0o777, 0o600);

        let long = dir.path().join("x".repeat(120));
        let fallback = default_socket_path(&long);
        assert!(fallback.as_os_str().len() < 108, "{}", fallback.display());
        assert_ne!(
            fallback,
            default_socket_path(&dir.path().join("y".repeat(120)))
        );

        // A symlink in place of the run dir is refused.
        let other = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path(), store.path().join(RUN_DIR)).unwrap();
        assert!(bind(&store.path().join(RUN_DIR).join(SOCKET_FILE)).is_err());
    }
}
