//! Per-user counters for limits that one user must not exhaust for everyone: how many
//! subscriptions (event and notification streams, chat and collaboration sessions) a user holds
//! at once. A permit counts one unit for its user until it is dropped.
//!
//! Counts live in this process only (one replica's view). This module never blocks and never
//! decides who a user is: callers pass the token's `sub`, and nothing for services or with auth
//! off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// At most `max` units per user at once.
#[derive(Debug)]
pub struct PerUserLimit {
    max: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One unit of a user's limit, released on drop.
#[derive(Debug)]
pub struct PerUserPermit {
    limit: Arc<PerUserLimit>,
    user: Arc<str>,
}

impl PerUserLimit {
    pub fn new(max: usize) -> Arc<PerUserLimit> {
        Arc::new(PerUserLimit {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The most one user may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes one unit for `user`, or `None` when the user already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, user: Arc<str>) -> Option<PerUserPermit> {
        // A panic while holding the lock leaves the counts consistent (each update is one
        // statement), so a poisoned lock is still usable.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(user.clone()).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                held.remove(&user);
            }
            return None;
        }
        *count += 1;
        Some(PerUserPermit {
            limit: self.clone(),
            user,
        })
    }

    /// Units `user` holds now.
    pub fn held_by(&self, user: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(user).copied().unwrap_or(0)
    }
}

impl Drop for PerUserPermit {
    fn drop(&mut self) {
        let mut held = self
            .limit
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_user_and_releases_on_drop() {
        let limit = PerUserLimit::new(2);
        let a1 = limit.try_acquire("a".into()).unwrap();
        let _a2 = limit.try_acquire("a".into()).unwrap();
        assert!(limit.try_acquire("a".into()).is_none());
        let _b = limit.try_acquire("b".into()).unwrap();
        drop(a1);
        assert_eq!(limit.held_by("a"), 1);
        assert!(limit.try_acquire("a".into()).is_some());
        let none = PerUserLimit::new(0);
        assert!(none.try_acquire("a".into()).is_none());
        assert!(none.held.lock().unwrap().is_empty());
    }
}
