//! Cross-validation folds. Every function returns index sets into the
//! sample list; a fold's `train` and `test` never overlap.
//!
//! - [`kfold`]: shuffled (seeded) k-fold, fold sizes differ by at most one.
//! - [`stratified_kfold`]: each class is shuffled and dealt round-robin, so
//!   every fold holds `⌊n_c/k⌋` or `⌈n_c/k⌉` samples of class `c` — the class
//!   ratio of every fold is the overall ratio up to one sample per class.
//! - [`group_kfold`]: whole groups (devices) per fold — every sample of a
//!   device is in the same test fold, so a fold measures how the model does
//!   on devices it has never seen, which is what a fleet model is for.
//!   Windows of one device overlap and follow one another; split across
//!   folds, they put near-copies of test windows into training and make the
//!   validation optimistic, most for the families that fit the most.
//! - [`blocked`]: samples ordered by time are cut into `k` consecutive
//!   blocks; fold `i` tests on block `i` and trains on all the others. The
//!   folds of one-class (unlabelled) data: every training sample is scored
//!   once by a model that never saw its block, which is what calibrating a
//!   threshold needs, and each model still trains on most of the data (a
//!   forward-chaining fold trains on as little as `1/(k+1)` of it and tests
//!   only the latest data, so on a drifting process its scores measure the
//!   drift more than the model).
//! - [`forward_chaining`]: samples ordered by time are cut into `k + 1`
//!   consecutive blocks; fold `i` trains on blocks `0..=i` and tests on block
//!   `i + 1`, so no fold ever trains on data later than its test data.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::TrainError;

/// One train/test split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// How folds are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldKind {
    KFold,
    Stratified,
    /// Whole devices per fold ([`group_kfold`]).
    ByDevice,
    /// Consecutive time blocks, each tested once ([`blocked`]).
    Blocked,
    ForwardChaining,
}

fn check(n: usize, k: usize) -> Result<(), TrainError> {
    if k < 2 {
        return Err(TrainError::Folds(format!(
            "k is {k}, at least 2 folds are needed"
        )));
    }
    if n < k {
        return Err(TrainError::Folds(format!(
            "{n} samples cannot make {k} folds"
        )));
    }
    Ok(())
}

fn folds_from_assignment(assign: &[usize], k: usize) -> Vec<Fold> {
    (0..k)
        .map(|f| Fold {
            train: (0..assign.len()).filter(|&i| assign[i] != f).collect(),
            test: (0..assign.len()).filter(|&i| assign[i] == f).collect(),
        })
        .collect()
}

/// Shuffled k-fold over `n` samples.
pub fn kfold(n: usize, k: usize, seed: u64) -> Result<Vec<Fold>, TrainError> {
    check(n, k)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut assign = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        assign[i] = pos % k;
    }
    Ok(folds_from_assignment(&assign, k))
}

/// Stratified k-fold: every class needs at least `k` samples, so every test
/// fold holds each class.
pub fn stratified_kfold(labels: &[bool], k: usize, seed: u64) -> Result<Vec<Fold>, TrainError> {
    check(labels.len(), k)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut assign = vec![0; labels.len()];
    let mut offset = 0;
    for class in [true, false] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if members.len() < k {
            return Err(TrainError::Folds(format!(
                "class {class} has {} samples, stratified {k}-fold needs at least {k}",
                members.len()
            )));
        }
        members.shuffle(&mut rng);
        // Deal round-robin, continuing where the previous class stopped so the
        // fold sizes stay balanced overall.
        for (pos, &i) in members.iter().enumerate() {
            assign[i] = (pos + offset) % k;
        }
        offset = (offset + members.len()) % k;
    }
    Ok(folds_from_assignment(&assign, k))
}

/// k-fold over groups: the distinct groups (sorted) are shuffled (seeded)
/// and dealt round-robin to `k` folds; a sample's fold is its group's. Needs
/// at least `k` groups.
pub fn group_kfold(groups: &[String], k: usize, seed: u64) -> Result<Vec<Fold>, TrainError> {
    check(groups.len(), k)?;
    let mut names: Vec<&String> = groups.iter().collect();
    names.sort();
    names.dedup();
    if names.len() < k {
        return Err(TrainError::Folds(format!(
            "{} groups cannot make {k} folds",
            names.len()
        )));
    }
    names.shuffle(&mut StdRng::seed_from_u64(seed));
    let fold_of: std::collections::HashMap<&String, usize> = names
        .iter()
        .enumerate()
        .map(|(pos, g)| (*g, pos % k))
        .collect();
    let assign: Vec<usize> = groups.iter().map(|g| fold_of[g]).collect();
    Ok(folds_from_assignment(&assign, k))
}

/// Blocked k-fold over samples whose times are `times` (any order; ties
/// stay in input order): `k` consecutive blocks of the time order, block `i`
/// is fold `i`'s test set.
pub fn blocked(times: &[i64], k: usize) -> Result<Vec<Fold>, TrainError> {
    check(times.len(), k)?;
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| times[i]);
    let n = order.len();
    let mut assign = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        assign[i] = pos * k / n;
    }
    Ok(folds_from_assignment(&assign, k))
}

/// Forward chaining over samples whose times are `times` (any order; ties
/// stay in input order). `k` folds from `k + 1` blocks.
pub fn forward_chaining(times: &[i64], k: usize) -> Result<Vec<Fold>, TrainError> {
    check(times.len(), k + 1)?;
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| times[i]);
    let n = order.len();
    let blocks = k + 1;
    let bound = |b: usize| b * n / blocks;
    let mut folds = Vec::with_capacity(k);
    for i in 0..k {
        let train_end = bound(i + 1);
        let test_end = bound(i + 2);
        let cut = times[order[train_end]];
        // Samples sharing the boundary time go to the test block, so no
        // training sample is as late as a test sample.
        let train: Vec<usize> = order[..train_end]
            .iter()
            .copied()
            .filter(|&j| times[j] < cut)
            .collect();
        let test: Vec<usize> = order[..test_end]
            .iter()
            .copied()
            .filter(|&j| times[j] >= cut)
            .collect();
        if train.is_empty() || test.is_empty() {
            return Err(TrainError::Folds(format!(
                "time-ordered fold {i} is empty (too many equal timestamps)"
            )));
        }
        folds.push(Fold { train, test });
    }
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_folds_test_each_consecutive_block_once() {
        // Times out of order: the blocks follow time, not input order.
        let times: Vec<i64> = (0..10).map(|i| (i * 7) % 10).collect();
        let folds = blocked(&times, 3).unwrap();
        assert_eq!(folds.len(), 3);
        let mut tested = vec![0; times.len()];
        for (f, fold) in folds.iter().enumerate() {
            let mut t: Vec<i64> = fold.test.iter().map(|&i| times[i]).collect();
            t.sort();
            let lo = (f * 10).div_ceil(3) as i64;
            let expected: Vec<i64> = (lo..((f + 1) * 10).div_ceil(3) as i64).collect();
            assert_eq!(t, expected, "fold {f}");
            assert_eq!(fold.train.len() + fold.test.len(), times.len());
            for &i in &fold.test {
                tested[i] += 1;
                assert!(!fold.train.contains(&i));
            }
        }
        assert!(tested.iter().all(|&t| t == 1));
        assert!(blocked(&times, 11).is_err());
    }

    #[test]
    fn group_folds_keep_every_device_in_one_test_fold() {
        let groups: Vec<String> = (0..50).map(|i| format!("d{}", i % 7)).collect();
        let folds = group_kfold(&groups, 3, 2).unwrap();
        assert_eq!(folds.len(), 3);
        let mut tested = vec![0; groups.len()];
        for f in &folds {
            for &i in &f.test {
                tested[i] += 1;
                // No sample of a test device is in training.
                assert!(f.train.iter().all(|&j| groups[j] != groups[i]));
            }
            assert_eq!(f.train.len() + f.test.len(), groups.len());
        }
        assert!(tested.iter().all(|&t| t == 1));
        assert!(group_kfold(&groups, 8, 2).is_err());
    }
}
