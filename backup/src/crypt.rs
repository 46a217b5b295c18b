//! age encryption of snapshot objects (the age format, <https://age-encryption.org/v1>): the
//! compressed stream is encrypted before it leaves the host, to X25519 recipients (public keys,
//! `age1...`) or a passphrase (age's scrypt recipient). The stored object is what
//! `age -d -i key.txt <id>.sqlite.zst.age | zstd -d` opens; its manifest records the recipients
//! and the SHA-256 of the stored (encrypted) bytes, so the integrity check needs no key.
//!
//! A host that only writes backups needs only the recipients; the identities (private keys)
//! are read for restores and drills only.

use std::io::Read;
use std::path::Path;

use age::secrecy::{ExposeSecret, SecretString};

use crate::error::Error;
use crate::manifest::Manifest;

/// What snapshots are encrypted to.
pub struct Encryption {
    recipients: Vec<age::x25519::Recipient>,
    passphrase: Option<SecretString>,
}

impl Encryption {
    /// X25519 recipients, `age1...` each (from `encryption.recipients` or a recipients file:
    /// one per line, `#` comments).
    pub fn to_recipients(list: &[String]) -> Result<Encryption, Error> {
        let mut recipients = Vec::new();
        for r in list {
            let r = r.trim();
            recipients.push(r.parse::<age::x25519::Recipient>().map_err(|e| {
                Error::Refused(format!(
                    "encryption recipient `{r}` is not an age X25519 public key (age1...): {e}"
                ))
            })?);
        }
        if recipients.is_empty() {
            return Err(Error::Refused("encryption has no recipients".into()));
        }
        Ok(Encryption {
            recipients,
            passphrase: None,
        })
    }

    /// age's scrypt recipient (`DBWARD_AGE_PASSPHRASE`).
    pub fn to_passphrase(passphrase: SecretString) -> Encryption {
        Encryption {
            recipients: Vec::new(),
            passphrase: Some(passphrase),
        }
    }

    /// What the manifest records: the public keys, or `passphrase`.
    pub fn names(&self) -> Vec<String> {
        if self.passphrase.is_some() {
            return vec!["passphrase".into()];
        }
        self.recipients.iter().map(|r| r.to_string()).collect()
    }

    /// An encryptor with a fresh file key.
    pub fn encryptor(&self) -> Result<age::Encryptor, Error> {
        if let Some(p) = &self.passphrase {
            return Ok(age::Encryptor::with_user_passphrase(SecretString::from(
                p.expose_secret().to_owned(),
            )));
        }
        age::Encryptor::with_recipients(self.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Refused(format!("age: {e}")))
    }
}

/// What restores and drills decrypt with: X25519 identities (`AGE-SECRET-KEY-1...`) and/or a
/// passphrase. Cheap to clone, and `Send`, for the threads that decode.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    passphrase: Option<std::sync::Arc<SecretString>>,
}

impl Identities {
    /// None: plaintext snapshots only.
    pub fn none() -> Identities {
        Identities::default()
    }

    /// Reads an age identity file (`age-keygen` writes one): `AGE-SECRET-KEY-1...` lines,
    /// `#` comments. The file's contents are never logged.
    pub fn from_file(path: &Path) -> Result<Identities, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Refused(format!(
                "age identity file {}: {e} (setting encryption.identity_file, env DBWARD_AGE_IDENTITY_FILE)",
                path.display()
            ))
        })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Never echo the line: it is a private key.
            keys.push(line.parse::<age::x25519::Identity>().map_err(|_| {
                Error::Refused(format!(
                    "age identity file {}: line {} is not an X25519 identity (AGE-SECRET-KEY-1...); plugin and SSH identities are not supported",
                    path.display(),
                    n + 1
                ))
            })?);
        }
        if keys.is_empty() {
            return Err(Error::Refused(format!(
                "age identity file {} holds no identity",
                path.display()
            )));
        }
        Ok(Identities {
            keys,
            passphrase: None,
        })
    }

    pub fn with_passphrase(mut self, passphrase: SecretString) -> Identities {
        self.passphrase = Some(std::sync::Arc::new(passphrase));
        self
    }

    /// Whether there is any identity or passphrase to decrypt with.
    pub fn any(&self) -> bool {
        !self.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.passphrase.is_none()
    }

    /// Refuses (exit 3), before anything is fetched, an encrypted snapshot this process has no
    /// identity for at all.
    pub fn check_can_try(&self, m: &Manifest) -> Result<(), Error> {
        match &m.encryption {
            Some(e) if self.is_empty() => Err(Error::NoKey(format!(
                "snapshot {} is encrypted (age) to {}; no identity to decrypt it: set DBWARD_AGE_IDENTITY_FILE or encryption.identity_file{}. Nothing was restored.",
                m.id,
                e.recipients.join(", "),
                if e.recipients.iter().any(|r| r == "passphrase") { " (or DBWARD_AGE_PASSPHRASE)" } else { "" }
            ))),
            _ => Ok(()),
        }
    }

    /// The stored object's bytes as zstd: decrypted when the manifest says the object is
    /// encrypted. A snapshot none of the identities opens is refused (exit 3), naming its
    /// recipients; the header is checked here, before any byte is decoded.
    pub fn reader<R: Read + Send + 'static>(
        &self,
        input: R,
        m: &Manifest,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let Some(enc) = &m.encryption else {
            return Ok(Box::new(input));
        };
        Ok(Box::new(ReadAhead::spawn(self.decrypting(input, m, enc)?)))
    }

    /// Refuses (exit 3) a snapshot in `input` that these identities cannot open, reading only
    /// its age header (and decrypting nothing): the check a restore makes before it changes
    /// anything. A plaintext snapshot passes.
    pub fn check_opens<R: Read>(&self, input: R, m: &Manifest) -> Result<(), Error> {
        if let Some(enc) = &m.encryption {
            self.decrypting(input, m, enc)?;
        }
        Ok(())
    }

    /// age's reader over `input`, after the header check (see [`Identities::reader`]).
    fn decrypting<R: Read>(
        &self,
        input: R,
        m: &Manifest,
        enc: &crate::manifest::Encryption,
    ) -> Result<age::stream::StreamReader<R>, Error> {
        self.check_can_try(m)?;
        self.open(
            input,
            &format!(
                "snapshot {} is encrypted (age) to {}",
                m.id,
                enc.recipients.join(", ")
            ),
            "Nothing was restored.",
        )
    }

    /// An object's bytes as stored before encryption: decrypted when its key says it is
    /// encrypted (`.age`), as they are otherwise; `after` ends a refusal's message.
    pub fn plain<'a>(
        &self,
        object: &'a [u8],
        key: &str,
        after: &str,
    ) -> Result<Box<dyn Read + 'a>, Error> {
        if !key.ends_with(".age") {
            return Ok(Box::new(object));
        }
        Ok(Box::new(self.open(
            object,
            &format!("{key} is encrypted (age)"),
            after,
        )?))
    }

    /// age's reader over `input` (an object with no manifest: a WAL file), or the refusal:
    /// `Damaged` for what is not age, `NoKey` when no identity opens it. `what` names the
    /// object in the message, `after` says what that means.
    pub fn open<R: Read>(
        &self,
        input: R,
        what: &str,
        after: &str,
    ) -> Result<age::stream::StreamReader<R>, Error> {
        let message = |why: String| format!("{what}: {why}. {after}");
        if self.is_empty() {
            return Err(Error::NoKey(message(
                "no identity to decrypt it: set DBWARD_AGE_IDENTITY_FILE, encryption.identity_file or DBWARD_AGE_PASSPHRASE".into(),
            )));
        }
        let refuse = |why: String| Error::Damaged(message(why));
        let no_key = |why: String| Error::NoKey(message(why));
        let decryptor = age::Decryptor::new(input).map_err(|e| refuse(e.to_string()))?;
        let reader = if decryptor.is_scrypt() {
            let Some(p) = &self.passphrase else {
                return Err(no_key(
                    "it is encrypted to a passphrase; set DBWARD_AGE_PASSPHRASE".into(),
                ));
            };
            let id = age::scrypt::Identity::new(SecretString::from(p.expose_secret().to_owned()));
            decryptor
                .decrypt(std::iter::once(&id as &dyn age::Identity))
                .map_err(|e| no_key(format!("the passphrase does not open it ({e})")))?
        } else {
            decryptor
                .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => no_key(
                        "none of the identities in DBWARD_AGE_IDENTITY_FILE / encryption.identity_file matches".into(),
                    ),
                    e => refuse(e.to_string()),
                })?
        };
        Ok(reader)
    }
}

/// Reads `inner` on a thread of its own, a few 1 MiB blocks ahead: decryption and the zstd
/// decoding that consumes it run on two cores instead of one after the other. Memory: four
/// blocks.
struct ReadAhead {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

impl ReadAhead {
    fn spawn(mut inner: impl Read + Send + 'static) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::spawn(move || loop {
            let mut block = vec![0u8; 1 << 20];
            let mut filled = 0;
            // Fill the block (or reach the end): fewer, larger hand-offs.
            let result = loop {
                match inner.read(&mut block[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == block.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            block.truncate(filled);
            let end = block.is_empty();
            let msg = result.map(|()| block);
            let failed = msg.is_err();
            // The reader went away (an error downstream, a stop): nothing left to do.
            if tx.send(msg).is_err() || end || failed {
                return;
            }
        });
        ReadAhead {
            rx,
            current: Vec::new(),
            at: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(block)) if block.is_empty() => self.done = true,
                Ok(Ok(block)) => {
                    self.current = block;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("the decryption thread ended early")),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The recipient (`age1...`) of an identity, for messages and tests.
pub fn public_key_of(identity: &str) -> Option<String> {
    identity
        .trim()
        .parse::<age::x25519::Identity>()
        .ok()
        .map(|i| i.to_public().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, then fails if told to.
    struct Trickle(Vec<u8>, usize, bool);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 == self.0.len() {
                return if self.2 {
                    Err(std::io::Error::other("truncated"))
                } else {
                    Ok(0)
                };
            }
            let n = buf.len().min(7).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_passes_every_byte_and_the_error_at_the_end() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        ReadAhead::spawn(Trickle(data.clone(), 0, false))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let mut out = Vec::new();
        let err = ReadAhead::spawn(Trickle(data.clone(), 0, true)).read_to_end(&mut out);
        assert!(err.is_err());
    }

    #[test]
    fn encrypted_round_trip_and_the_wrong_key() {
        let key = age::x25519::Identity::generate();
        let enc = Encryption::to_recipients(&[key.to_public().to_string()]).unwrap();
        let mut stored = Vec::new();
        {
            use std::io::Write;
            let mut w = enc.encryptor().unwrap().wrap_output(&mut stored).unwrap();
            w.write_all(b"zstd bytes").unwrap();
            w.finish().unwrap();
        }
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "id": "20261122T093000Z-manual-3f2a", "kind": "manual",
            "created_at": "2026-11-22T09:30:00Z", "engine": "sqlite", "server_version": "3",
            "database": "app", "host": "h", "dbward_version": "0", "format": "sqlite",
            "data_key": "app/20261122T093000Z-manual-3f2a.sqlite.zst.age", "raw_bytes": 1,
            "stored_bytes": 1, "sha256": "", "compression": {"algorithm": "zstd", "level": 3},
            "encryption": {"scheme": "age", "recipients": enc.names()},
            "migration_head": null, "row_counts": {}, "duration_ms": 0
        }))
        .unwrap();
        let ids = Identities {
            keys: vec![key],
            passphrase: None,
        };
        let mut out = Vec::new();
        ids.reader(std::io::Cursor::new(stored.clone()), &m)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"zstd bytes");
        let other = Identities {
            keys: vec![age::x25519::Identity::generate()],
            passphrase: None,
        };
        assert!(matches!(
            other.reader(std::io::Cursor::new(stored), &m),
            Err(Error::NoKey(_))
        ));
        assert!(matches!(
            Identities::none().check_can_try(&m),
            Err(Error::NoKey(_))
        ));
    }
}
