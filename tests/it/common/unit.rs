//! A systemd unit run by hand, as systemd runs its service, where no systemd runs (this
//! machine's process 1 is not systemd): the environment systemd gives a system service (its
//! PATH, `Environment=`, `EnvironmentFile=`, `STATE_DIRECTORY` from `StateDirectory=`, which it
//! creates with `StateDirectoryMode=`), `UMask=`, `WorkingDirectory=`,
//! `ConditionPathExists=`, and each `Exec*=` line split and expanded by systemd's rules (quotes,
//! `${VAR}`, `$$`, the `%i`/`%n` specifiers, the `-` and `+` prefixes). Enough for the units
//! dbward ships and the recipes show; a line it does not understand is a panic, never a guess.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// systemd's PATH for a service (systemd.exec(5), "Environment Variables in Spawned Processes").
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Unit {
    /// The unit's name as systemd knows it (`dbward-alert@x.service`: `%n`; `x`: `%i`).
    pub name: String,
    text: String,
}

/// What one `Exec*=` line did: its exit code, stdout and stderr.
pub type Ran = (i32, String, String);

impl Unit {
    /// The unit file at `path`, known as `name` (an instance of a template: `a@i.service`).
    pub fn read(path: impl AsRef<Path>, name: &str) -> Unit {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Unit::new(name, &text)
    }

    pub fn new(name: &str, text: &str) -> Unit {
        for line in text.lines().map(str::trim) {
            assert!(
                !line.ends_with('\\'),
                "{name}: continued lines are not read here: {line}"
            );
            if let Some((key, _)) = line.split_once('=') {
                assert!(
                    !matches!(key, "User" | "Group" | "DynamicUser" | "RootDirectory"),
                    "{name}: {key}= is not run by hand here"
                );
            }
        }
        Unit {
            name: name.to_string(),
            text: text.to_string(),
        }
    }

    /// Every value of `key=` lines, in order (sections are merged, as systemd merges them).
    pub fn values(&self, key: &str) -> Vec<String> {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .collect()
    }

    fn last(&self, key: &str) -> Option<String> {
        self.values(key).pop().filter(|v| !v.is_empty())
    }

    /// `%i`, `%n`, `%%` (the specifiers the units use; any other is a panic).
    fn specifiers(&self, value: &str) -> String {
        let instance = self
            .name
            .split_once('@')
            .map(|(_, rest)| rest.rsplit_once('.').map_or(rest, |(i, _)| i))
            .unwrap_or("");
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('i') => out.push_str(instance),
                Some('n') => out.push_str(&self.name),
                Some('%') => out.push('%'),
                other => panic!(
                    "{}: specifier %{other:?} is not run by hand here",
                    self.name
                ),
            }
        }
        out
    }

    /// Every `ConditionPathExists=` holds (systemd skips the unit, successfully, otherwise).
    pub fn conditions_hold(&self) -> bool {
        self.values("ConditionPathExists")
            .iter()
            .all(|p| match p.strip_prefix('!') {
                Some(p) => !Path::new(p).exists(),
                None => Path::new(p).exists(),
            })
    }

    /// The environment systemd gives the service: nothing inherited but its PATH, then
    /// `Environment=`, then each `EnvironmentFile=` (a `-` one may be missing), and
    /// `STATE_DIRECTORY`, which makes the directory as systemd does (root's, mode
    /// `StateDirectoryMode=`, 0755 unless set; an existing one gets that mode too).
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![("PATH".to_string(), SYSTEMD_PATH.to_string())];
        for assignments in self.values("Environment") {
            for word in split(&self.specifiers(&assignments)) {
                let (k, v) = word.split_once('=').expect("Environment=KEY=value");
                env.push((k.to_string(), v.to_string()));
            }
        }
        for file in self.values("EnvironmentFile") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(f) => (true, f.to_string()),
                None => (false, file),
            };
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(_) if optional => continue,
                Err(e) => panic!("{}: EnvironmentFile={file}: {e}", self.name),
            };
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{file}: not KEY=value: {line}"));
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                env.push((k.trim().to_string(), v.to_string()));
            }
        }
        if let Some(dir) = self.last("StateDirectory") {
            assert!(!dir.contains(' '), "one StateDirectory= only: {dir}");
            let path = Path::new("/var/lib").join(&dir);
            let mode = self
                .last("StateDirectoryMode")
                .map_or(0o755, |m| u32::from_str_radix(&m, 8).unwrap());
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            env.push(("STATE_DIRECTORY".into(), path.display().to_string()));
        }
        env
    }

    /// The command of one `Exec*=` value, as systemd would start it, and whether its failure
    /// is ignored (`-`).
    fn command(&self, value: &str, env: &[(String, String)]) -> (Command, bool) {
        let mut value = value;
        let mut ignore = false;
        loop {
            if let Some(v) = value.strip_prefix('-') {
                ignore = true;
                value = v;
            } else if let Some(v) = value.strip_prefix('+') {
                // Full privileges: the test runs as root already.
                value = v;
            } else if value.starts_with(['@', ':', '!']) {
                panic!("{}: prefix of `{value}` is not run by hand here", self.name);
            } else {
                break;
            }
        }
        let words: Vec<String> = split(&self.specifiers(value))
            .into_iter()
            .map(|w| expand(&w, env))
            .collect();
        assert!(words[0].starts_with('/'), "{}: {value}", self.name);
        let mut c = Command::new(&words[0]);
        c.args(&words[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .current_dir(
                self.last("WorkingDirectory")
                    .map_or("/".to_string(), |d| d.trim_start_matches('-').to_string()),
            );
        if let Some(mask) = self.last("UMask") {
            let mask = u32::from_str_radix(&mask, 8).unwrap() as libc::mode_t;
            // SAFETY: umask(2) only, between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        (c, ignore)
    }

    /// The words of each `key=` line (specifiers replaced, quotes and prefixes as systemd reads
    /// them), variables left as written.
    pub fn commands(&self, key: &str) -> Vec<Vec<String>> {
        self.values(key)
            .iter()
            .map(|v| split(&self.specifiers(v.trim_start_matches(['-', '+']))))
            .collect()
    }

    /// Runs each `key=` line in order, as systemd runs `ExecStartPre=`/`ExecStart=` (oneshot)/
    /// `ExecStartPost=`: a failing line (not `-`) stops the rest. What each did, in order.
    pub fn exec(&self, key: &str) -> Vec<Ran> {
        let env = self.environment();
        let mut ran = Vec::new();
        for value in self.values(key) {
            let (mut c, ignore) = self.command(&value, &env);
            let out = c
                .output()
                .unwrap_or_else(|e| panic!("{}: {key}={value}: {e}", self.name));
            let code = out.status.code().unwrap_or(-1);
            ran.push((code, super::stdout(&out), super::stderr(&out)));
            if code != 0 && !ignore {
                break;
            }
        }
        ran
    }

    /// Starts the one `ExecStart=` of a `Type=simple` service and returns at once, as systemd
    /// does; its output goes to `log`.
    pub fn spawn(&self, log: &Path) -> Child {
        let starts = self.values("ExecStart");
        assert_eq!(starts.len(), 1, "{}: one ExecStart=", self.name);
        let (mut c, _) = self.command(&starts[0], &self.environment());
        let log = std::fs::File::create(log).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        c.spawn()
            .unwrap_or_else(|e| panic!("{}: ExecStart: {e}", self.name))
    }
}

/// The last line's failure, or success, of what `exec` ran: (code, stderr of that line).
pub fn outcome(ran: &[Ran]) -> (i32, String) {
    let (code, _, err) = ran.last().expect("the unit ran nothing");
    (*code, err.clone())
}

/// Words as systemd splits a command line: whitespace, with "double" and 'single' quotes
/// (a backslash escape inside them is not read here: a panic).
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {
                assert!(c != '\\', "a backslash in quotes is not read here: {line}");
                word.push(c);
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "an unclosed quote: {line}");
    if in_word {
        words.push(word);
    }
    words
}

/// `${VAR}` replaced by its value (empty when unset), `$$` by `$`; a bare `$VAR` (which
/// systemd splits into words) is a panic here.
fn expand(word: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').expect("${ without }");
            let name = &r[..end];
            let value = env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            out.push_str(value.unwrap_or(""));
            rest = &r[end + 1..];
        } else {
            panic!("a bare $VAR is not run by hand here: {word}");
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn split_and_expand_as_systemd_does() {
    let env = vec![("A".to_string(), "x y".to_string())];
    assert_eq!(
        split("/bin/sh -c 'test -n \"$$A\" || exit 1' last"),
        ["/bin/sh", "-c", "test -n \"$$A\" || exit 1", "last"]
    );
    assert_eq!(expand("a${A}b$$c${B}", &env), "ax yb$c");
    let unit = Unit::new("dbward-alert@dbward-backup.service.service", "");
    assert_eq!(
        unit.specifiers("%i %n %%"),
        "dbward-backup.service dbward-alert@dbward-backup.service.service %"
    );
}
