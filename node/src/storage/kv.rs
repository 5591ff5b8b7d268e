//! The state machine's semantics: how a command changes the key space.
//!
//! Both stores apply commands through `apply_command` over their own `KvTable`,
//! so that a command means exactly the same thing on every member whatever its
//! backend. Applying is deterministic: it depends only on the table's contents,
//! the command, and the revision counter, which every applied command advances
//! by one.

use crate::types::{Check, Command, Compare, Op, Response, Txn, Versioned};

/// The key space as the state machine sees it during one applied batch.
pub trait KvTable {
    type Error;

    fn get(&self, key: &str) -> Result<Option<Versioned>, Self::Error>;
    fn put(&mut self, key: &str, revision: u64, value: &str) -> Result<(), Self::Error>;
    /// Removes `key`; returns whether it existed.
    fn delete(&mut self, key: &str) -> Result<bool, Self::Error>;
}

/// Applies a command from a log entry: a single command at the next
/// revision, or each command of a batch at its own, in order.
pub fn apply_logged<T: KvTable>(
    table: &mut T,
    command: &Command,
    revision: &mut u64,
) -> Result<Response, T::Error> {
    match command {
        Command::Batch(commands) => commands
            .iter()
            .map(|c| apply_logged(table, c, revision))
            .collect::<Result<Vec<_>, _>>()
            .map(Response::Batch),
        single => {
            *revision += 1;
            apply_single(table, single, *revision)
        }
    }
}

/// Applies one non-batch `command` at `revision`.
fn apply_single<T: KvTable>(
    table: &mut T,
    command: &Command,
    revision: u64,
) -> Result<Response, T::Error> {
    Ok(match command {
        Command::Put { key, value } => {
            table.put(key, revision, value)?;
            Response::Put { revision }
        }
        Command::Delete { key } => {
            let deleted = table.delete(key)?;
            Response::Delete { revision, deleted }
        }
        Command::CompareAndSwap {
            key,
            expected,
            value,
        } => {
            let current = table.get(key)?;
            let matches = match (&current, expected) {
                (None, None) => true,
                (Some(found), Some(expected)) => found.value == *expected,
                _ => false,
            };
            if matches {
                table.put(key, revision, value)?;
                Response::CompareAndSwap {
                    revision,
                    succeeded: true,
                    current: None,
                }
            } else {
                Response::CompareAndSwap {
                    revision,
                    succeeded: false,
                    current,
                }
            }
        }
        Command::Txn(txn) => {
            let succeeded = apply_txn(table, txn, revision)?;
            Response::Txn {
                revision,
                succeeded,
            }
        }
        Command::Batch(_) => {
            unreachable!("apply_logged applies the commands of a batch one by one")
        }
    })
}

fn apply_txn<T: KvTable>(table: &mut T, txn: &Txn, revision: u64) -> Result<bool, T::Error> {
    let mut succeeded = true;
    for compare in &txn.compare {
        if !holds(table, compare)? {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in branch {
        match op {
            Op::Put { key, value } => table.put(key, revision, value)?,
            Op::Delete { key } => {
                table.delete(key)?;
            }
        }
    }
    Ok(succeeded)
}

fn holds<T: KvTable>(table: &T, compare: &Compare) -> Result<bool, T::Error> {
    let current = table.get(&compare.key)?;
    Ok(match &compare.check {
        Check::Absent => current.is_none(),
        Check::Present => current.is_some(),
        Check::ValueEquals(expected) => current.is_some_and(|c| c.value == *expected),
        Check::RevisionEquals(expected) => current.map_or(0, |c| c.revision) == *expected,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use super::*;

    #[derive(Default)]
    struct Map(BTreeMap<String, Versioned>);

    impl KvTable for Map {
        type Error = Infallible;
        fn get(&self, key: &str) -> Result<Option<Versioned>, Infallible> {
            Ok(self.0.get(key).cloned())
        }
        fn put(&mut self, key: &str, revision: u64, value: &str) -> Result<(), Infallible> {
            let value = value.to_owned();
            self.0.insert(key.to_owned(), Versioned { value, revision });
            Ok(())
        }
        fn delete(&mut self, key: &str) -> Result<bool, Infallible> {
            Ok(self.0.remove(key).is_some())
        }
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn apply(map: &mut Map, command: Command, revision: u64) -> Response {
        let mut counter = revision - 1;
        apply_logged(map, &command, &mut counter).unwrap()
    }

    #[test]
    fn put_records_the_revision_and_delete_reports_existence() {
        let mut map = Map::default();
        assert_eq!(
            apply(&mut map, put("a", "1"), 5),
            Response::Put { revision: 5 }
        );
        assert_eq!(map.0["a"].revision, 5);
        let delete = Command::Delete { key: "a".into() };
        assert_eq!(
            apply(&mut map, delete.clone(), 6),
            Response::Delete {
                revision: 6,
                deleted: true
            }
        );
        assert_eq!(
            apply(&mut map, delete, 7),
            Response::Delete {
                revision: 7,
                deleted: false
            }
        );
    }

    #[test]
    fn cas_swaps_only_on_an_exact_match() {
        let mut map = Map::default();
        let cas = |expected: Option<&str>, value: &str| Command::CompareAndSwap {
            key: "k".into(),
            expected: expected.map(Into::into),
            value: value.into(),
        };
        // Absent key: only `expected: None` matches.
        let r = apply(&mut map, cas(Some("x"), "1"), 1);
        assert_eq!(
            r,
            Response::CompareAndSwap {
                revision: 1,
                succeeded: false,
                current: None
            }
        );
        assert!(map.0.is_empty());
        let r = apply(&mut map, cas(None, "1"), 2);
        assert!(matches!(
            r,
            Response::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        // Present key: `expected: None` fails and reports the current value.
        let r = apply(&mut map, cas(None, "2"), 3);
        assert_eq!(
            r,
            Response::CompareAndSwap {
                revision: 3,
                succeeded: false,
                current: Some(Versioned {
                    value: "1".into(),
                    revision: 2
                })
            }
        );
        let r = apply(&mut map, cas(Some("1"), "2"), 4);
        assert!(matches!(
            r,
            Response::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        assert_eq!(map.0["k"].value, "2");
        assert_eq!(map.0["k"].revision, 4);
    }

    #[test]
    fn txn_applies_exactly_one_branch_whole() {
        let mut map = Map::default();
        apply(&mut map, put("guard", "on"), 1);
        let txn = |check: Check| {
            Command::Txn(Txn {
                compare: vec![
                    Compare {
                        key: "guard".into(),
                        check: Check::Present,
                    },
                    Compare {
                        key: "guard".into(),
                        check,
                    },
                ],
                success: vec![
                    Op::Put {
                        key: "a".into(),
                        value: "1".into(),
                    },
                    Op::Put {
                        key: "b".into(),
                        value: "2".into(),
                    },
                    Op::Delete {
                        key: "guard".into(),
                    },
                ],
                failure: vec![Op::Put {
                    key: "failed".into(),
                    value: "yes".into(),
                }],
            })
        };
        // The second comparison fails: nothing from `success`, all of `failure`.
        let r = apply(&mut map, txn(Check::ValueEquals("off".into())), 2);
        assert_eq!(
            r,
            Response::Txn {
                revision: 2,
                succeeded: false
            }
        );
        assert_eq!(map.0.keys().collect::<Vec<_>>(), ["failed", "guard"]);

        let r = apply(&mut map, txn(Check::RevisionEquals(1)), 3);
        assert_eq!(
            r,
            Response::Txn {
                revision: 3,
                succeeded: true
            }
        );
        assert_eq!(map.0.keys().collect::<Vec<_>>(), ["a", "b", "failed"]);
        assert!(map.0.values().all(|v| v.revision == 3 || v.value == "yes"));
    }

    #[test]
    fn a_batch_applies_each_command_at_its_own_revision_in_order() {
        let mut map = Map::default();
        let mut revision = 10;
        let batch = Command::Batch(vec![
            put("a", "1"),
            Command::CompareAndSwap {
                key: "a".into(),
                expected: Some("1".into()),
                value: "2".into(),
            },
            Command::Delete { key: "b".into() },
        ]);
        let response = apply_logged(&mut map, &batch, &mut revision).unwrap();
        assert_eq!(
            response,
            Response::Batch(vec![
                Response::Put { revision: 11 },
                Response::CompareAndSwap {
                    revision: 12,
                    succeeded: true,
                    current: None
                },
                Response::Delete {
                    revision: 13,
                    deleted: false
                },
            ])
        );
        assert_eq!(revision, 13);
        assert_eq!(map.0["a"].revision, 12);
        let single = apply_logged(&mut map, &put("c", "3"), &mut revision).unwrap();
        assert_eq!(single, Response::Put { revision: 14 });
    }

    #[test]
    fn revision_zero_means_absent() {
        let mut map = Map::default();
        let txn = Command::Txn(Txn {
            compare: vec![Compare {
                key: "new".into(),
                check: Check::RevisionEquals(0),
            }],
            success: vec![Op::Put {
                key: "new".into(),
                value: "v".into(),
            }],
            failure: vec![],
        });
        assert!(matches!(
            apply(&mut map, txn.clone(), 1),
            Response::Txn {
                succeeded: true,
                ..
            }
        ));
        assert!(matches!(
            apply(&mut map, txn, 2),
            Response::Txn {
                succeeded: false,
                ..
            }
        ));
    }
}
