//! What a command hands back to `main`: a result for people and one JSON document for scripts,
//! or a failure with its exit code. Exit codes live here and nowhere else.

use serde_json::{json, Value};

use crate::settings::SettingsError;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_LOCK_TIMEOUT: u8 = 4;
pub const EXIT_RESTORED: u8 = 5;
/// The batch committed, but an after-migrate hook failed: the deploy is broken (the health
/// guard restores its pre-deploy snapshot), the database holds the batch.
pub const EXIT_HOOK_FAILED: u8 = 6;
/// Stopped by SIGINT / SIGTERM: 128 + the signal's number, the shell's convention.
pub const EXIT_SIGINT: u8 = 130;
pub const EXIT_SIGTERM: u8 = 143;

pub struct Report {
    /// Printed on stdout without `--json`.
    pub text: String,
    /// Printed on stdout with `--json`.
    pub json: Value,
    /// 0; 3 for a `status` that found drift; the command's own code for `run`.
    pub code: u8,
}

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// Structured details for `--json` (lint findings, drift, ...).
    pub details: Value,
    /// A result for people, printed on stdout without `--json` (a drill's check list).
    pub text: String,
    /// The snapshot itself was bad (`backup::Error::Damaged`): an older one may be good.
    pub damaged: bool,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            details: Value::Null,
            text: String::new(),
            damaged: false,
        }
    }

    pub fn to_json(&self, command: &str) -> Value {
        let mut doc = json!({ "command": command, "ok": false, "exit_code": self.code, "error": self.message });
        if let (Value::Object(doc), Value::Object(details)) = (&mut doc, &self.details) {
            doc.extend(details.clone());
        }
        doc
    }
}

impl From<SettingsError> for Failure {
    fn from(e: SettingsError) -> Failure {
        Failure::new(EXIT_USAGE, e.0)
    }
}

impl From<backup::Error> for Failure {
    fn from(e: backup::Error) -> Failure {
        use backup::{Error, ErrorKind};
        if let Error::Database(inner) = e {
            return inner.into();
        }
        let code = match e.kind() {
            ErrorKind::Usage => EXIT_USAGE,
            ErrorKind::Refused => EXIT_REFUSED,
            ErrorKind::Failed => EXIT_FAILED,
        };
        let mut f = Failure::new(code, e.to_string());
        f.damaged = matches!(e, Error::Damaged(_));
        f
    }
}

impl From<migrator::Error> for Failure {
    fn from(e: migrator::Error) -> Failure {
        use migrator::{Error, ErrorKind};
        let code = match e.kind() {
            ErrorKind::Usage => EXIT_USAGE,
            ErrorKind::Refused => EXIT_REFUSED,
            ErrorKind::LockTimeout => EXIT_LOCK_TIMEOUT,
            ErrorKind::Failed => EXIT_FAILED,
        };
        let details = match &e {
            Error::Files { problems } => json!({ "file_problems": problems }),
            Error::Lint { findings } => json!({ "lint": findings }),
            Error::Drift { drift } => json!({ "drift": drift }),
            Error::Apply { file, position, .. } => json!({
                "failed_migration": file,
                "line": position.map(|p| p.0),
                "column": position.map(|p| p.1),
            }),
            _ => Value::Null,
        };
        Failure {
            code,
            message: e.to_string(),
            details,
            text: String::new(),
            damaged: false,
        }
    }
}
