//! Cross-validation folds. Every function returns index sets into the
//! sample list; a fold's `train` and `test` never overlap.
//!
//! - [`kfold`]: shuffled (seeded) k-fold, fold sizes differ by at most one.
//! - [`stratified_kfold`]: each class is shuffled and dealt round-robin, so
//!   every fold holds `⌊n_c/k⌋` or `⌈n_c/k⌉` samples of class `c` — the class
//!   ratio of every fold is the overall ratio up to one sample per class.
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
