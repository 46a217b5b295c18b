//! The stores of one configuration: the primary, then each mirror (`store.mirrors`), and
//! whether a write needs every copy (`store.require = all`) or the primary's (`primary`).
//! What the commands share about them lives here once: the primary's result is the job's and
//! a mirror's failure is reported beside it ([`StoreSet::each`]); a read starts where the
//! manifest was found and falls back through the others ([`StoreSet::starting_at`]); a search
//! takes the first store that has what it looks for ([`StoreSet::find`]).

use std::future::Future;

use super::Store;
use crate::error::Error;

pub struct StoreSet {
    /// The primary first; never empty.
    stores: Vec<Store>,
    require_all: bool,
}

/// Where a read found what it looked for ([`StoreSet::find`]).
pub struct Found<'a, T> {
    /// 0 for the primary, `n` for mirror `n`.
    pub at: usize,
    pub store: &'a Store,
    pub value: T,
}

/// What a job did in one mirror (numbered from 1, in `store.mirrors` order).
pub struct InMirror<T> {
    pub mirror: usize,
    pub result: Result<T, Error>,
}

impl StoreSet {
    pub fn new(primary: Store, mirrors: Vec<Store>, require_all: bool) -> StoreSet {
        let mut stores = vec![primary];
        stores.extend(mirrors);
        StoreSet {
            stores,
            require_all,
        }
    }

    pub fn primary(&self) -> &Store {
        &self.stores[0]
    }

    /// Every store, the primary first.
    pub fn all(&self) -> &[Store] {
        &self.stores
    }

    /// The mirrors with their numbers (1, 2, ...).
    pub fn mirrors(&self) -> impl Iterator<Item = (usize, &Store)> {
        self.stores.iter().enumerate().skip(1)
    }

    /// `store.require = all`: a write counts only once every copy holds it.
    pub fn require_all(&self) -> bool {
        self.require_all
    }

    /// `first`, then every other store in order: where a read fetches from once `first` had
    /// what it looked for.
    pub fn starting_at<'a>(&'a self, first: &'a Store) -> Vec<&'a Store> {
        std::iter::once(first)
            .chain(self.stores.iter().filter(|s| !std::ptr::eq(*s, first)))
            .collect()
    }

    /// Runs `job` on the primary, then on each mirror, one after the other. The primary's
    /// result is the job's (its failure ends it before any mirror); each mirror's comes back
    /// beside it for the caller to report or to fail on (`require_all`).
    pub async fn each<'a, T, F, Fut>(&'a self, job: F) -> Result<(T, Vec<InMirror<T>>), Error>
    where
        F: Fn(&'a Store) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let primary = job(self.primary()).await?;
        let mut mirrors = Vec::new();
        for (mirror, store) in self.mirrors() {
            mirrors.push(InMirror {
                mirror,
                result: job(store).await,
            });
        }
        Ok((primary, mirrors))
    }

    /// Asks each store in order (the primary first) for what `job` looks for: the first that
    /// has it (`Ok(Some)`) ends the search. `Ok(None)` only when every store answered that it
    /// has none; when none has it and one could not answer, that store's failure (the first):
    /// what it holds is unknown, so "nowhere" cannot be said. `failed` hears each failure as it
    /// comes (to say it, when a later store may still answer).
    pub async fn find<'a, T, E, F, Fut>(
        &'a self,
        job: F,
        mut failed: impl FnMut(usize, &Store, &E),
    ) -> Result<Option<Found<'a, T>>, E>
    where
        F: Fn(&'a Store) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let mut first_failure = None;
        for (at, store) in self.stores.iter().enumerate() {
            match job(store).await {
                Ok(Some(value)) => return Ok(Some(Found { at, store, value })),
                Ok(None) => {}
                Err(e) => {
                    failed(at, store, &e);
                    first_failure.get_or_insert(e);
                }
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}
