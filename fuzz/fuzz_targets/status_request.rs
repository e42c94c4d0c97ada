//! The status socket's request handling on arbitrary bytes: `daemon::status::parse_request`
//! (one line → `Request` or `RequestError`), the error line answered for a refusal, and
//! `read_line`, which splits the byte stream into bounded lines.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use daemon::status::{
    error_line, parse_request, read_line, Line, Request, RequestError, MAX_IMPORT_PATHS,
    MAX_INTERVAL_MS, MAX_LINE, MIN_INTERVAL_MS,
};
use libfuzzer_sys::fuzz_target;
use mlxfs_fuzz::{check_heap, measure};
use serde_json::Value;

const CODES: &[&str] = &[
    "bad_json",
    "unsupported_version",
    "unknown_command",
    "bad_request",
    "line_too_long",
    "partial_request",
];

fn check_request(line: &[u8]) {
    let (parsed, heap) = measure(|| parse_request(line));
    check_heap("parse_request", heap, line.len());
    match parsed {
        Ok(req) => {
            assert!(line.len() <= MAX_LINE);
            let v: Value = serde_json::from_slice(line).expect("an accepted request is JSON");
            assert_eq!(v.get("v").and_then(Value::as_u64), Some(1));
            let cmd = v.get("cmd").and_then(Value::as_str);
            match req {
                Request::Watch { interval } => {
                    assert_eq!(cmd, Some("watch"));
                    let lo = Duration::from_millis(MIN_INTERVAL_MS);
                    let hi = Duration::from_millis(MAX_INTERVAL_MS);
                    assert!(lo <= interval && interval <= hi, "interval {interval:?}");
                }
                Request::Import { paths, .. } => {
                    assert_eq!(cmd, Some("import"));
                    assert!((1..=MAX_IMPORT_PATHS).contains(&paths.len()));
                    let given = v["paths"].as_array().expect("paths is an array");
                    assert_eq!(given.len(), paths.len());
                    for (p, g) in paths.iter().zip(given) {
                        assert!(p.is_absolute(), "relative import path {p:?}");
                        assert_eq!(Some(p.as_path()), g.as_str().map(Path::new));
                    }
                }
                // Commands without arguments (status, models, gc, ...): the variant names the
                // command.
                other => {
                    let name = format!("{other:?}").to_lowercase();
                    assert_eq!(cmd, Some(name.as_str()));
                }
            }
        }
        Err(e) => {
            assert_ne!(
                e,
                RequestError::Partial,
                "only the reader reports a partial line"
            );
            assert_eq!(e == RequestError::TooLong, line.len() > MAX_LINE);
            match &e {
                RequestError::BadVersion(s) | RequestError::UnknownCommand(s) => {
                    assert!(s.len() <= 40, "{} bytes shown", s.len())
                }
                RequestError::BadJson(m) => assert!(m.len() <= 200, "{} bytes shown", m.len()),
                _ => {}
            }
            let code = e.code();
            assert!(CODES.contains(&code), "code {code:?}");
            let message = e.to_string();
            let answer = error_line(code, &message);
            assert!(answer.ends_with('\n') && answer.matches('\n').count() == 1);
            let a: Value = serde_json::from_str(&answer).expect("the error line is JSON");
            assert_eq!(a["v"].as_u64(), Some(1));
            assert_eq!(a["ok"].as_bool(), Some(false));
            assert_eq!(a["code"].as_str(), Some(code));
            assert_eq!(a["error"].as_str(), Some(message.as_str()));
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Splits `stream` with `read_line` (reader buffer of `cap` bytes, lines of at most `max`)
/// and checks each outcome against a direct split at `\n`.
fn check_lines(stream: &[u8], cap: usize, max: usize) {
    let segments: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    runtime().block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(cap, stream);
        let mut buf = Vec::new();
        let mut complete = 0;
        loop {
            let line = read_line(&mut reader, &mut buf, max)
                .await
                .expect("reading a slice cannot fail");
            match line {
                Line::Complete => {
                    let seg = segments[complete];
                    assert!(complete + 1 < segments.len(), "a line without its newline");
                    assert!(seg.len() <= max);
                    assert_eq!(buf, seg.strip_suffix(b"\r").unwrap_or(seg));
                    check_request(&buf);
                    complete += 1;
                }
                Line::Eof => {
                    assert_eq!(complete + 1, segments.len());
                    assert!(segments[complete].is_empty());
                    break;
                }
                Line::Partial => {
                    assert_eq!(complete + 1, segments.len());
                    let seg = segments[complete];
                    assert!(!seg.is_empty() && seg.len() <= max);
                    break;
                }
                Line::TooLong => {
                    assert!(segments[complete].len() > max);
                    break;
                }
            }
        }
    });
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one request line.
    check_request(data);
    // The input as a stream: byte 0 picks the reader's buffer size, byte 1 the line limit.
    if let [a, b, stream @ ..] = data {
        check_lines(stream, 1 + usize::from(*a % 16), usize::from(*b) * 4);
    }
});
