//! The other hosts of the application (`[health] hosts`), asked by the guard before it undoes a
//! deploy of a database they share: a release that fails on this host only (a bad disk, a
//! secret missing here) must not roll back the database the healthy hosts are serving.
//!
//! Each host is asked whether it serves: its health URL answers a status `health.expect_status`
//! accepts (any 2xx by default). Not the release check (`expect_body`, checks, probes): a host
//! still on the old release during a rolling deploy serves, and counts as such.
//!
//! `hosts_rule = "all"` (the default): the guard undoes the deploy only when no other host
//! serves; `"majority"`: when more than half of all hosts (this one included) do not. A host
//! that does not answer counts as not serving, unless no other host answers at all: then this
//! host may be the one cut off from the others, and the rule is not met. The guard asks again
//! every `health.interval` until the rule is met or `health.timeout` has passed (the other
//! hosts of a deploy made everywhere at once may start the new release a little later).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probe;
use crate::settings::{Health, HostsRule};

/// What one other host answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub url: String,
    /// The status it answered, if it answered HTTP.
    pub status: Option<u16>,
    pub serving: bool,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The decision, with every host's last answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// The rule is met: the guard may undo the deploy.
    pub met: bool,
    pub rule: HostsRule,
    pub answers: Vec<Answer>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serving = self.answers.iter().filter(|a| a.serving).count();
        let rule = match self.rule {
            HostsRule::All => "all: every host must be unhealthy",
            HostsRule::Majority => "majority: more than half of the hosts must be unhealthy",
        };
        write!(
            f,
            "{serving} of {} other host(s) serving (hosts_rule = {rule}): ",
            self.answers.len()
        )?;
        let each: Vec<String> = self
            .answers
            .iter()
            .map(|a| match (a.status, &a.error) {
                (Some(s), _) if a.serving => format!("{} serves ({s})", a.url),
                (Some(s), _) => format!("{} does not ({s})", a.url),
                (None, e) => format!(
                    "{} did not answer ({})",
                    a.url,
                    e.as_deref().unwrap_or_default()
                ),
            })
            .collect();
        write!(f, "{}", each.join(", "))?;
        if !self.answers.is_empty() && self.answers.iter().all(|a| a.status.is_none()) {
            write!(
                f,
                "; no other host answered, and this one may be the host cut off"
            )?;
        }
        Ok(())
    }
}

/// Asks every host (at once) until the rule is met or `h.timeout` has passed; the last round's
/// verdict.
pub async fn ask_until_met(h: &Health) -> Verdict {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        let verdict = decide(h.hosts_rule, ask(h).await);
        if verdict.met || started.elapsed() + h.interval > h.timeout {
            return verdict;
        }
        // Said when the answers change, not at every round.
        let now = verdict.to_string();
        if now != said {
            tracing::info!(
                "waiting up to {} for the other hosts: {now}",
                migrator::error::humanize(h.timeout)
            );
            said = now;
        }
        tokio::time::sleep(h.interval).await;
    }
}

/// One round: every host asked at once, each within the probe's limit in all.
async fn ask(h: &Health) -> Vec<Answer> {
    let per_try = h.interval.max(Duration::from_secs(2)).min(h.timeout);
    let asks: Vec<_> = h
        .hosts
        .iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move { (probe::ask(&url, per_try).await, url) })
        })
        .collect();
    let mut answers = Vec::new();
    for ask in asks {
        let (result, url) = ask.await.expect("asking a host does not panic");
        answers.push(match result {
            Ok((status, _)) => Answer {
                serving: probe::accepted(status, &h.expect_status),
                url,
                status: Some(status),
                error: None,
            },
            Err(e) => Answer {
                url,
                status: None,
                serving: false,
                error: Some(e.to_string()),
            },
        });
    }
    answers
}

/// The rule over `answers` (this host, unhealthy, is one more host).
fn decide(rule: HostsRule, answers: Vec<Answer>) -> Verdict {
    let hosts = answers.len() + 1;
    let serving = answers.iter().filter(|a| a.serving).count();
    let any_answered = answers.iter().any(|a| a.status.is_some());
    let met = any_answered
        && match rule {
            HostsRule::All => serving == 0,
            HostsRule::Majority => (hosts - serving) * 2 > hosts,
        };
    Verdict { met, rule, answers }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(status: Option<u16>) -> Answer {
        Answer {
            url: "http://b/".into(),
            status,
            serving: status.is_some_and(|s| (200..300).contains(&s)),
            error: None,
        }
    }

    #[test]
    fn all_needs_every_host_down_majority_more_than_half() {
        let (up, down, silent) = (host(Some(200)), host(Some(503)), host(None));
        let met = |rule, a: &[&Answer]| decide(rule, a.iter().map(|a| (*a).clone()).collect()).met;
        assert!(met(HostsRule::All, &[&down, &down]));
        assert!(!met(HostsRule::All, &[&down, &up]));
        // A host that does not answer does not serve, as long as some host answered.
        assert!(met(HostsRule::All, &[&down, &silent]));
        assert!(!met(HostsRule::All, &[&silent, &silent]));
        assert!(!met(HostsRule::All, &[&silent]));
        // Three hosts: this one and one more make a majority; two of two do not disagree.
        assert!(met(HostsRule::Majority, &[&down, &up]));
        assert!(!met(HostsRule::Majority, &[&up, &up]));
        assert!(!met(HostsRule::Majority, &[&up]));
        assert!(met(HostsRule::Majority, &[&down]));
        assert!(met(HostsRule::Majority, &[&silent, &up]));
        assert!(!met(HostsRule::Majority, &[&silent, &silent]));
    }
}
