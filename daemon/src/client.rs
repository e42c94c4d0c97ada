//! A small blocking client of the status socket, for the CLI (`status`, `top`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::report::{ModelEntry, StatusReport, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection without answering")]
    Closed,
    #[error("the daemon answered with something that is not JSON: {0}")]
    BadAnswer(String),
    #[error("the daemon refused the request ({code}): {message}")]
    Refused { code: String, message: String },
}

/// One connection to the status socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one request line.
    pub fn send(&mut self, cmd: &str, interval_ms: Option<u64>) -> Result<(), ClientError> {
        let mut req = json!({"v": PROTOCOL_VERSION, "cmd": cmd});
        if let Some(ms) = interval_ms {
            req["interval_ms"] = json!(ms);
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Reads one answer line; an error answer becomes [`ClientError::Refused`].
    pub fn receive(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| ClientError::BadAnswer(format!("{e}: {}", line.trim())))?;
        if value.get("ok") != Some(&Value::Bool(true)) {
            return Err(ClientError::Refused {
                code: value["code"].as_str().unwrap_or("unknown").to_string(),
                message: value["error"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(value)
    }

    pub fn status(&mut self) -> Result<StatusReport, ClientError> {
        self.send("status", None)?;
        parse_status(self.receive()?)
    }

    /// Asks the daemon to import `paths` (absolute); `progress` gets the bytes done so far.
    pub fn import(
        &mut self,
        paths: &[std::path::PathBuf],
        options: store::import::ImportOptions,
        progress: &dyn Fn(u64),
    ) -> Result<store::import::ImportReport, ClientError> {
        let paths: Vec<String> = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let mut line = json!({"v": PROTOCOL_VERSION, "cmd": "import", "paths": paths,
            "verify_sources": options.verify_sources, "sync": options.sync})
        .to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        // An import of a big cache takes long: wait without a read timeout.
        self.reader.get_ref().set_read_timeout(None)?;
        loop {
            let mut answer = self.receive()?;
            if let Some(bytes) = answer.get("progress").and_then(Value::as_u64) {
                progress(bytes);
                continue;
            }
            return serde_json::from_value(answer["report"].take())
                .map_err(|e| ClientError::BadAnswer(e.to_string()));
        }
    }

    /// Asks the daemon to collect garbage; `progress` gets the bytes copied so far.
    pub fn gc(&mut self, progress: &dyn Fn(u64)) -> Result<store::gc::GcReport, ClientError> {
        self.send("gc", None)?;
        // Compacting big packs takes long: wait without a read timeout.
        self.reader.get_ref().set_read_timeout(None)?;
        loop {
            let mut answer = self.receive()?;
            if let Some(bytes) = answer.get("progress").and_then(Value::as_u64) {
                progress(bytes);
                continue;
            }
            return serde_json::from_value(answer["report"].take())
                .map_err(|e| ClientError::BadAnswer(e.to_string()));
        }
    }

    pub fn models(&mut self) -> Result<Vec<ModelEntry>, ClientError> {
        self.send("models", None)?;
        let mut answer = self.receive()?;
        serde_json::from_value(answer["models"].take())
            .map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// The `status` member of an answer (status or watch).
pub fn parse_status(mut answer: Value) -> Result<StatusReport, ClientError> {
    serde_json::from_value(answer["status"].take())
        .map_err(|e| ClientError::BadAnswer(e.to_string()))
}

/// One status request on a fresh connection.
pub fn status(path: &Path, timeout: Duration) -> Result<StatusReport, ClientError> {
    Client::connect(path, timeout)?.status()
}
