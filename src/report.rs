//! What a command hands back to `main`: a result for people and one JSON document for scripts,
//! or a failure with its exit code ([`Exit`]).

use serde_json::{json, Value};

use crate::exit::Exit;
use crate::settings::SettingsError;

pub struct Report {
    /// Printed on stdout without `--json`.
    pub text: String,
    /// Printed on stdout with `--json`.
    pub json: Value,
    /// Success; `Refused` for a `status` that found drift; the command's own code for `run`.
    pub code: Exit,
}

#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    /// What failed, and what to do next: one headline (context and hints are added to it).
    pub message: String,
    /// What caused it, outermost first, the root cause last: said after the headline as
    /// `Caused by:` lines ([`Failure::full`]).
    pub causes: Vec<String>,
    /// Structured details for `--json` (lint findings, drift, ...).
    pub details: Value,
    /// A result for people, printed on stdout without `--json` (a drill's check list).
    pub text: String,
    /// The snapshot itself was bad (`backup::Error::Damaged`): an older one may be good.
    pub damaged: bool,
}

impl Failure {
    pub fn new(code: Exit, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            causes: Vec::new(),
            details: Value::Null,
            text: String::new(),
            damaged: false,
        }
    }

    /// A failure of `code` whose headline is `e`'s message and whose causes are `e`'s sources.
    pub fn of(code: Exit, e: &dyn std::error::Error) -> Failure {
        let mut causes = Vec::new();
        let mut source = e.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Failure {
            causes,
            ..Failure::new(code, e.to_string())
        }
    }

    /// The headline, then each cause on its own line under `Caused by:`.
    pub fn full(&self) -> String {
        let mut text = self.message.clone();
        if !self.causes.is_empty() {
            text.push_str("\nCaused by:");
            for cause in &self.causes {
                text.push_str(&format!("\n    {cause}"));
            }
        }
        text
    }

    pub fn to_json(&self, command: &str) -> Value {
        let mut doc = json!({ "command": command, "ok": false, "exit_code": self.code.code(), "error": self.full() });
        if let (Value::Object(doc), Value::Object(details)) = (&mut doc, &self.details) {
            doc.extend(details.clone());
        }
        doc
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Failure {
        Failure::of(Exit::Failed, &e)
    }
}

impl From<SettingsError> for Failure {
    fn from(e: SettingsError) -> Failure {
        Failure::new(Exit::Usage, e.0)
    }
}

impl From<backup::Error> for Failure {
    fn from(e: backup::Error) -> Failure {
        use backup::{Error, ErrorKind};
        if let Error::Database(inner) = e {
            return inner.into();
        }
        let code = match e.kind() {
            ErrorKind::Usage => Exit::Usage,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::Failed => Exit::Failed,
        };
        let mut f = Failure::of(code, &e);
        f.damaged = matches!(e, Error::Damaged(_));
        f
    }
}

impl From<backup::pitr::rewind::Error> for Failure {
    fn from(e: backup::pitr::rewind::Error) -> Failure {
        use backup::pitr::rewind::Error;
        match e {
            Error::Refused(_) => Failure::new(Exit::Refused, e.to_string()),
            Error::Failed(_) => Failure::new(Exit::Failed, e.to_string()),
            Error::Backup(e) => e.into(),
        }
    }
}

impl From<dbconn::Error> for Failure {
    fn from(e: dbconn::Error) -> Failure {
        Failure::from(migrator::Error::Database(e))
    }
}

impl From<migrator::source::SourceError> for Failure {
    fn from(e: migrator::source::SourceError) -> Failure {
        Failure::from(migrator::Error::from(e))
    }
}

impl From<migrator::Error> for Failure {
    fn from(e: migrator::Error) -> Failure {
        use migrator::{Error, ErrorKind};
        let code = match e.kind() {
            ErrorKind::Usage => Exit::Usage,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::LockTimeout => Exit::LockTimeout,
            ErrorKind::Failed => Exit::Failed,
        };
        let details = match &e {
            Error::Source(migrator::source::SourceError::Files { problems }) => {
                json!({ "file_problems": problems })
            }
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
            details,
            ..Failure::of(code, &e)
        }
    }
}
