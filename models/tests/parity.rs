//! Tract vs the plain-Rust reference on the builder's graphs: random
//! inputs, batches of 1, 64 and 256, scores equal within 1e-5 (relative to
//! the score's magnitude when it exceeds 1).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use outpost_models::builder::{Dim, GraphBuilder, graphs};
use outpost_models::{Model, ModelError, ReferenceModel};
use protocol::features::{FeatureSpec, Stat};
use protocol::manifest::{
    Hysteresis, InputSpec, MANIFEST_FORMAT, ModelFamily, ModelManifest, ModelMetadata, ScoreSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A manifest whose feature count is `channels × stats` (2 stats).
fn manifest(channels: usize) -> ModelManifest {
    let names: Vec<String> = (0..channels).map(|i| format!("c{i}")).collect();
    ModelManifest {
        format: MANIFEST_FORMAT,
        name: "parity".into(),
        version: 1,
        family: ModelFamily::Other,
        input: InputSpec {
            channels: names.clone(),
            window_len: 8,
            hop: 4,
            frame_period: Duration::from_secs(1),
        },
        features: FeatureSpec {
            channels: names,
            stats: vec![Stat::Mean, Stat::Std],
            bands: None,
            raw: false,
            categorical: Vec::new(),
            baseline: None,
        },
        score: ScoreSpec {
            threshold: 1.0,
            threshold_rule: None,
            smoothing: Default::default(),
            hysteresis: Hysteresis::default(),
        },
        metadata: ModelMetadata::default(),
    }
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn assert_parity(onnx: &[u8], features: usize, rng: &mut StdRng) {
    let model = Model::load(onnx, manifest(features / 2)).unwrap();
    let reference = ReferenceModel::from_bytes(onnx).unwrap();
    for batch in [1usize, 64, 256] {
        let x = random(rng, batch * features, 3.0);
        let got = model.score(&x).unwrap();
        let want = reference.scores(&x, features).unwrap();
        assert_eq!(got.len(), batch);
        assert_eq!(want.len(), batch);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let tol = 1e-5 * w.abs().max(1.0);
            assert!(
                (f64::from(g) - w).abs() <= tol,
                "batch {batch} row {i}: tract {g} vs reference {w}"
            );
        }
    }
}

#[test]
fn standardized_energy_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    let f = 10;
    let mean = random(&mut rng, f, 1.0);
    let scale: Vec<f32> = (0..f).map(|_| rng.random_range(0.5..2.0)).collect();
    assert_parity(
        &graphs::standardized_energy(&mean, &scale).unwrap(),
        f,
        &mut rng,
    );
}

#[test]
fn mahalanobis_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    let f = 10;
    let mean = random(&mut rng, f, 1.0);
    let w = random(&mut rng, f * f, 0.5);
    assert_parity(&graphs::mahalanobis(&mean, &w).unwrap(), f, &mut rng);
}

#[test]
fn autoencoder_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    let (f, h) = (10, 4);
    let w1 = random(&mut rng, f * h, 0.5);
    let b1 = random(&mut rng, h, 0.1);
    let w2 = random(&mut rng, h * f, 0.5);
    let b2 = random(&mut rng, f, 0.1);
    assert_parity(
        &graphs::autoencoder(&w1, &b1, &w2, &b2).unwrap(),
        f,
        &mut rng,
    );
}

/// Every op the builder offers, in one graph.
fn every_op(f: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut g = GraphBuilder::new("every_op");
    let x = g.input("features", &[Dim::batch(), Dim::Fixed(f)]);
    let w = g
        .initializer("w", &[3, f], random(rng, 3 * f, 0.5))
        .unwrap(); // used transposed
    let b = g.initializer("b", &[3], random(rng, 3, 0.1)).unwrap();
    let a = g.gemm(&x, &w, Some(&b), 0.5, 2.0, false, true); // [batch, 3]
    let r = g.relu(&a);
    let s = g.sigmoid(&a);
    let t = g.tanh(&a);
    let m = g.max(&[&r, &s, &t]);
    let n = g.min(&[&r, &t]);
    let ab = g.abs(&n);
    let sq = g.sqrt(&ab);
    let cat = g.concat(&[&m, &sq], 1); // [batch, 6]
    let resh = g.reshape(&cat, &[0, 2, 3]); // [batch, 2, 3]
    let tr = g.transpose(&resh, &[0, 2, 1]); // [batch, 3, 2]
    let flat = g.reshape(&tr, &[0, -1]); // [batch, 6]
    let v = g.initializer("v", &[6, 2], random(rng, 12, 1.0)).unwrap();
    let mm = g.matmul(&flat, &v); // [batch, 2]
    let two = g.initializer("two", &[], vec![2.0]).unwrap();
    let d = g.div(&mm, &two);
    let e = g.sub(&d, &two);
    let ex = g.exp(&e);
    let sum = g.reduce_sum(&ex, &[1], true); // [batch, 1]
    let mx = g.reduce_max(&mm, &[-1], true);
    let mean = g.reduce_mean(&flat, &[1], true);
    let p = g.add(&sum, &mx);
    let q = g.mul(&p, &mean);
    let score = g.neg(&q);
    g.output(&score, "score", &[Dim::batch(), Dim::Fixed(1)]);
    g.to_bytes().unwrap()
}

#[test]
fn a_graph_using_every_builder_op_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    let f = 8;
    let onnx = every_op(f, &mut rng);
    assert_parity(&onnx, f, &mut rng);
}

#[test]
fn a_graph_whose_input_width_differs_from_the_manifest_is_refused() {
    let onnx = graphs::standardized_energy(&[0.0; 6], &[1.0; 6]).unwrap();
    // The manifest yields 2 channels × 2 stats = 4 features, the graph takes 6.
    let err = Model::load(&onnx, manifest(2)).unwrap_err();
    assert!(
        matches!(err, ModelError::InputShape { features: 4, .. }),
        "{err}"
    );
}

#[test]
fn a_fixed_batch_or_a_wide_output_is_refused() {
    let mut g = GraphBuilder::new("fixed");
    let x = g.input("features", &[Dim::Fixed(1), Dim::Fixed(4)]);
    let y = g.relu(&x);
    let s = g.reduce_sum(&y, &[1], true);
    g.output(&s, "score", &[Dim::Fixed(1), Dim::Fixed(1)]);
    let err = Model::load(&g.to_bytes().unwrap(), manifest(2)).unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");

    let mut g = GraphBuilder::new("wide");
    let x = g.input("features", &[Dim::batch(), Dim::Fixed(4)]);
    let y = g.relu(&x);
    g.output(&y, "score", &[Dim::batch(), Dim::Fixed(4)]);
    let err = Model::load(&g.to_bytes().unwrap(), manifest(2)).unwrap_err();
    assert!(matches!(err, ModelError::OutputShape { .. }), "{err}");
}

#[test]
fn garbage_bytes_are_a_typed_error_not_a_panic() {
    let err = Model::load(b"not a model at all", manifest(2)).unwrap_err();
    assert!(matches!(err, ModelError::Onnx(_)), "{err}");
    assert!(ReferenceModel::from_bytes(&[0xff, 0xff, 0xff]).is_err());
}

#[test]
fn a_ragged_input_is_refused() {
    let onnx = graphs::standardized_energy(&[0.0; 4], &[1.0; 4]).unwrap();
    let model = Model::load(&onnx, manifest(2)).unwrap();
    assert!(matches!(
        model.score(&[1.0; 5]),
        Err(ModelError::Ragged { .. })
    ));
    assert!(model.score(&[]).unwrap().is_empty());
}

#[test]
fn model_files_load_from_disk() {
    let dir = std::env::temp_dir().join(format!("outpost-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("m.onnx");
    let man = dir.join("m.json");
    std::fs::write(
        &onnx,
        graphs::standardized_energy(&[0.0; 4], &[1.0; 4]).unwrap(),
    )
    .unwrap();
    std::fs::write(&man, manifest(2).to_json()).unwrap();
    let model = Model::load_files(&onnx, &man).unwrap();
    let s = model.score(&[1.0, 1.0, 1.0, 1.0]).unwrap();
    assert!((s[0] - 1.0).abs() < 1e-6);
    assert!(matches!(
        Model::load_files(&dir.join("missing.onnx"), &man),
        Err(ModelError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
