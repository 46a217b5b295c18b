//! Every exit code dbward uses: the bottom of the binary's modules (the command line's help
//! lists them, and `report` maps every crate's error kind to one).

/// Every exit code dbward uses, and the only place one is chosen: commands return a variant, and
/// each crate's error kind maps to one in `report`'s `From` impls. docs/contract.md's table is
/// checked against [`Exit::TABLE`] by the test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// The operation failed; a failed batch was rolled back.
    Failed,
    /// A bad flag or setting.
    Usage,
    /// Refused by a safety check before anything changed.
    Refused,
    /// The migration lock was not free in time.
    LockTimeout,
    /// Unhealthy, and the pre-deploy snapshot was restored.
    Restored,
    /// The batch committed, but an after-migrate hook failed: the deploy is broken (the health
    /// guard restores its pre-deploy snapshot), the database holds the batch.
    HookFailed,
    /// `wal-fetch`: the file was not fetched, and may be in the archive (a store that does not
    /// answer, a damaged object, a bad setting). PostgreSQL stops recovery on 126 or more,
    /// where 1 would make it end recovery as if the archive had nothing more.
    WalUnavailable,
    /// Stopped by SIGINT: 128 + the signal's number, the shell's convention.
    Interrupted,
    /// Stopped by SIGTERM.
    Terminated,
    /// `run` and `locked`: the command's own exit code (128 + a signal that ended it).
    Child(u8),
}

impl Exit {
    /// dbward's own codes, in the contract's order (the test below holds the two together).
    pub const TABLE: [Exit; 10] = [
        Exit::Success,
        Exit::Failed,
        Exit::Usage,
        Exit::Refused,
        Exit::LockTimeout,
        Exit::Restored,
        Exit::HookFailed,
        Exit::WalUnavailable,
        Exit::Interrupted,
        Exit::Terminated,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::LockTimeout => 4,
            Exit::Restored => 5,
            Exit::HookFailed => 6,
            Exit::WalUnavailable => 126,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
            Exit::Child(c) => c,
        }
    }

    /// A few words for `--help`.
    pub fn label(self) -> &'static str {
        match self {
            Exit::Success => "ok",
            Exit::Failed => "failed",
            Exit::Usage => "usage/config",
            Exit::Refused => "refused by a safety check",
            Exit::LockTimeout => "migration lock timeout",
            Exit::Restored => "unhealthy and restored",
            Exit::HookFailed => "after-migrate hook failed",
            Exit::WalUnavailable => "wal-fetch: not fetched (recovery must stop)",
            Exit::Interrupted => "SIGINT",
            Exit::Terminated => "SIGTERM",
            Exit::Child(_) => "the command's own code",
        }
    }

    /// A child process's status: its code, or 128 + the signal that ended it.
    pub fn of_child(status: Option<std::process::ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)))
            .unwrap_or(1);
        Exit::Child(code.clamp(0, 255) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    /// The contract's exit-code table lists exactly the codes of [`Exit::TABLE`], in order.
    #[test]
    fn the_contract_lists_every_exit_code() {
        let contract = include_str!("../docs/contract.md");
        let table = contract
            .split("## Exit codes")
            .nth(1)
            .expect("docs/contract.md has an Exit codes section");
        let documented: Vec<u8> = table
            .lines()
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                l.split('|')
                    .nth(1)
                    .unwrap_or_default()
                    .split(',')
                    .map(|c| c.trim().parse::<u8>().expect("a code"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let ours: Vec<u8> = Exit::TABLE.iter().map(|e| e.code()).collect();
        assert_eq!(documented, ours);
    }
}
