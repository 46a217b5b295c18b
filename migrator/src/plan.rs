//! Comparing the migrations folder with the database's history: what is applied, what is
//! pending, and what has drifted (edited after it was applied, missing, or merged late).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::source::{MigrationFile, Migrations};
use dbconn::{Applied, AppliedRepeatable, Head};

impl crate::source::MigrationFile {
    /// The head this file makes once applied (versioned files only).
    pub fn head(&self) -> Head {
        Head {
            version: self.version,
            name: self.name.clone(),
            checksum: self.checksum.to_string(),
            version_text: self.version_text.clone(),
        }
    }
}

/// Why the folder and the database disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "drift", rename_all = "kebab-case")]
pub enum Drift {
    /// Applied, but the file's checksum (name, version, text) differs from the recorded one.
    Changed {
        version: i64,
        name: String,
        file: PathBuf,
    },
    /// Applied, but no file has this version any more.
    Missing {
        version: i64,
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        version_text: Option<String>,
    },
    /// Not applied, with a version below the newest applied one (a late merge).
    OutOfOrder {
        version: i64,
        file: PathBuf,
        /// How the newest applied version is shown (`V12`, `V1.1`).
        newest_applied: String,
    },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Changed { file, .. } => write!(f, "{}: changed since it was applied (checksum differs)", file.display()),
            Drift::Missing { version, name, version_text } => write!(f, "{}__{name}.sql: applied, but missing from the migrations folder", dbconn::history::label(*version, version_text.as_deref())),
            Drift::OutOfOrder { file, newest_applied, .. } => write!(f, "{}: not applied, but older than the newest applied migration {newest_applied} (merged late)", file.display()),
        }
    }
}

/// One step of a batch ([`Plan::phases`]).
#[derive(Debug, Clone)]
pub enum Phase<'a> {
    /// Files applied together in one transaction.
    Batch(Vec<&'a MigrationFile>),
    /// A non-transactional file, run one statement at a time.
    Statements(&'a MigrationFile),
}

#[derive(Debug)]
pub struct Plan<'a> {
    pub applied: Vec<Applied>,
    /// In version order: what `migrate` would apply, in one transaction.
    pub pending: Vec<&'a MigrationFile>,
    /// Repeatable files that are new or changed since last applied, in name order: applied
    /// after `pending`, in the same transaction. A repeatable file removed from the folder is
    /// not drift (what it created stays, as Flyway leaves it).
    pub repeatable: Vec<&'a MigrationFile>,
    pub drift: Vec<Drift>,
}

impl<'a> Plan<'a> {
    pub fn new(
        migrations: &'a Migrations,
        applied: Vec<Applied>,
        applied_repeatable: &[AppliedRepeatable],
    ) -> Plan<'a> {
        let mut plan = Plan::versioned(&migrations.versioned, applied);
        plan.repeatable = migrations
            .repeatable
            .iter()
            .filter(|f| {
                !applied_repeatable
                    .iter()
                    .any(|a| a.name == f.name && a.checksum == f.checksum)
            })
            .collect();
        plan
    }

    /// Everything the batch would apply: versioned files, then repeatable ones.
    pub fn batch(&self) -> Vec<&'a MigrationFile> {
        self.pending
            .iter()
            .chain(&self.repeatable)
            .copied()
            .collect()
    }

    /// The batch in the order it runs: the transactional files up to a non-transactional one
    /// form one atomic batch, that file runs on its own ([`Phase::Statements`]), and so on;
    /// repeatable files join the last atomic batch (or make one at the end).
    pub fn phases(&self) -> Vec<Phase<'a>> {
        let mut phases = Vec::new();
        let mut batch = Vec::new();
        for f in &self.pending {
            if f.no_transaction {
                if !batch.is_empty() {
                    phases.push(Phase::Batch(std::mem::take(&mut batch)));
                }
                phases.push(Phase::Statements(f));
            } else {
                batch.push(*f);
            }
        }
        batch.extend(self.repeatable.iter().copied());
        if !batch.is_empty() {
            phases.push(Phase::Batch(batch));
        }
        phases
    }

    fn versioned(files: &'a [MigrationFile], mut applied: Vec<Applied>) -> Plan<'a> {
        applied.sort_by_key(|a| dbconn::history::order(a.version, a.version_text.as_deref()));
        let by_version: BTreeMap<i64, &MigrationFile> =
            files.iter().map(|f| (f.version, f)).collect();
        let mut drift = Vec::new();
        for a in &applied {
            match by_version.get(&a.version) {
                Some(f) if f.checksum != a.checksum => drift.push(Drift::Changed {
                    version: a.version,
                    name: a.name.clone(),
                    file: f.path.clone(),
                }),
                Some(_) => {}
                None => drift.push(Drift::Missing {
                    version: a.version,
                    name: a.name.clone(),
                    version_text: a.version_text.clone(),
                }),
            }
        }
        let newest = applied.last();
        let mut pending = Vec::new();
        for f in files {
            if applied.iter().any(|a| a.version == f.version) {
                continue;
            }
            match newest {
                Some(n)
                    if f.order() < dbconn::history::order(n.version, n.version_text.as_deref()) =>
                {
                    drift.push(Drift::OutOfOrder {
                        version: f.version,
                        file: f.path.clone(),
                        newest_applied: dbconn::history::label(
                            n.version,
                            n.version_text.as_deref(),
                        ),
                    })
                }
                _ => pending.push(f),
            }
        }
        Plan {
            applied,
            pending,
            repeatable: Vec::new(),
            drift,
        }
    }

    /// The newest applied migration: the database's schema version.
    pub fn head(&self) -> Option<&Applied> {
        self.applied.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: i64, checksum: u64) -> MigrationFile {
        MigrationFile {
            path: format!("V{version}__m.sql").into(),
            version,
            version_text: None,
            name: "m".into(),
            sql: "select 1".into(),
            text: "select 1".into(),
            checksum,
            kind: crate::source::Kind::Versioned,
            layout: crate::layout::Layout::Dbward,
            no_transaction: false,
        }
    }

    fn applied(version: i64, checksum: u64) -> Applied {
        Applied {
            version,
            name: "m".into(),
            applied_on: String::new(),
            checksum,
            version_text: None,
        }
    }

    #[test]
    fn pending_and_drift() {
        let files = [
            file(1, 10),
            file(2, 20),
            file(3, 30),
            file(5, 50),
            file(6, 60),
        ];
        let plan = Plan::versioned(
            &files,
            vec![
                applied(1, 10),
                applied(2, 21),
                applied(4, 40),
                applied(5, 50),
            ],
        );
        assert_eq!(
            plan.pending.iter().map(|f| f.version).collect::<Vec<_>>(),
            [6]
        );
        assert_eq!(plan.head().unwrap().version, 5);
        assert_eq!(
            plan.drift,
            [
                Drift::Changed {
                    version: 2,
                    name: "m".into(),
                    file: "V2__m.sql".into()
                },
                Drift::Missing {
                    version: 4,
                    name: "m".into(),
                    version_text: None
                },
                Drift::OutOfOrder {
                    version: 3,
                    file: "V3__m.sql".into(),
                    newest_applied: "V5".into()
                },
            ]
        );
    }

    #[test]
    fn versions_with_parts_are_ordered_by_their_parts() {
        let dotted = |text: &str, checksum: u64| {
            let parts: Vec<u64> = text.split('.').map(|p| p.parse().unwrap()).collect();
            let mut f = file(dbconn::history::dotted_key(&parts), checksum);
            f.version_text = Some(text.into());
            f
        };
        let mut files = vec![file(1, 1), dotted("1.10", 3), dotted("1.9", 2), file(2, 4)];
        files.sort_by_key(|f| f.order());
        let mut a19 = applied(files[1].version, 2);
        a19.version_text = Some("1.9".into());
        // Applied: 1 and 1.9 (read back in key order, which is not version order).
        let plan = Plan::versioned(&files, vec![a19, applied(1, 1)]);
        assert_eq!(plan.head().unwrap().version_text.as_deref(), Some("1.9"));
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
        assert_eq!(
            plan.pending.iter().map(|f| f.label()).collect::<Vec<_>>(),
            ["V1.10 m", "V2 m"]
        );
        // 1.10 applied, then a 1.5 appears: merged late.
        let mut a110 = applied(files[2].version, 3);
        a110.version_text = Some("1.10".into());
        let mut late = files.clone();
        late.insert(2, dotted("1.5", 9));
        let mut a19 = applied(files[1].version, 2);
        a19.version_text = Some("1.9".into());
        let plan = Plan::versioned(&late, vec![applied(1, 1), a110, a19]);
        assert!(
            matches!(&plan.drift[..], [Drift::OutOfOrder { newest_applied, .. }] if newest_applied == "V1.10"),
            "{:?}",
            plan.drift
        );
    }

    #[test]
    fn a_non_transactional_file_splits_the_batch() {
        let mut files = vec![file(1, 1), file(2, 2), file(3, 3), file(4, 4), file(5, 5)];
        files[2].no_transaction = true;
        files[3].no_transaction = true;
        let mut r = file(0, 9);
        r.kind = crate::source::Kind::Repeatable;
        let migrations = Migrations {
            versioned: files,
            repeatable: vec![r],
            layout: Some(crate::layout::Layout::Dbward),
        };
        let plan = Plan::new(&migrations, vec![applied(1, 1)], &[]);
        let shape: Vec<String> = plan
            .phases()
            .iter()
            .map(|p| match p {
                Phase::Batch(b) => format!(
                    "batch {:?}",
                    b.iter().map(|f| f.version).collect::<Vec<_>>()
                ),
                Phase::Statements(f) => format!("alone {}", f.version),
            })
            .collect();
        assert_eq!(shape, ["batch [2]", "alone 3", "alone 4", "batch [5, 0]"]);
        // The last file alone, with nothing after it: no empty batch.
        let plan = Plan::new(&migrations, vec![applied(1, 1), applied(2, 2)], &[]);
        let mut no_repeatable = plan;
        no_repeatable.repeatable.clear();
        no_repeatable.pending.truncate(2);
        assert_eq!(no_repeatable.phases().len(), 2);
        assert!(matches!(no_repeatable.phases()[1], Phase::Statements(_)));
    }

    #[test]
    fn fresh_database_has_everything_pending() {
        let files = [file(1, 10), file(2, 20)];
        let plan = Plan::versioned(&files, vec![]);
        assert_eq!(plan.pending.len(), 2);
        assert!(plan.drift.is_empty() && plan.head().is_none());
    }

    #[test]
    fn repeatables_pending_when_new_or_changed() {
        let mut r = file(0, 7);
        r.kind = crate::source::Kind::Repeatable;
        r.name = "views".into();
        let mut gone = r.clone();
        gone.name = "funcs".into();
        let migrations = Migrations {
            versioned: vec![file(1, 10)],
            repeatable: vec![r.clone()],
            layout: Some(crate::layout::Layout::Dbward),
        };
        let same = AppliedRepeatable {
            name: "views".into(),
            applied_on: String::new(),
            checksum: 7,
        };
        let removed = AppliedRepeatable {
            name: "funcs".into(),
            applied_on: String::new(),
            checksum: 1,
        };
        let plan = Plan::new(&migrations, vec![applied(1, 10)], &[same.clone(), removed]);
        assert!(plan.repeatable.is_empty() && plan.drift.is_empty());
        let changed = AppliedRepeatable {
            checksum: 8,
            ..same
        };
        let plan = Plan::new(&migrations, vec![applied(1, 10)], &[changed]);
        assert_eq!(plan.batch().len(), 1);
        let plan = Plan::new(&migrations, vec![], &[]);
        assert_eq!(
            plan.batch().iter().map(|f| f.label()).collect::<Vec<_>>(),
            ["V1 m", "R__views"]
        );
    }
}
