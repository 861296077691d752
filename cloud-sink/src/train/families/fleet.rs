//! Fleet transfer learning with the autoencoder: one base model for the
//! whole fleet, fine-tuned per device with a frozen encoder
//! ([`Autoencoder::fine_tune`]), each compared with the base on the
//! device's own held-out rows.
//!
//! The input is one matrix per device, rows in time order, all preprocessed
//! with one shared pipeline (the same standardisation for every device).
//!
//! 1. Each device's rows are split by time: the latest `heldout_fraction`
//!    (at least one row) are held out, the rest are its training rows.
//! 2. The base model is fitted on the union of all devices' training rows;
//!    its early stopping watches the union of each device's latest
//!    [`VALIDATION_FRACTION`] of training rows, so every device is in the
//!    validation set (not just the last one).
//! 3. One model per device is fine-tuned from the base on that device's
//!    training rows (its early stopping uses the same tail).
//! 4. On each device's held-out rows: the base's and the fine-tuned model's
//!    mean squared reconstruction error, and the gain
//!    `(base − fine-tuned) / base` (negative when fine-tuning hurt).
//!
//! Every error about one device is wrapped in [`TrainError::Device`].

use std::collections::BTreeMap;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::super::TrainError;
use super::HyperParams;
use super::autoencoder::{Autoencoder, MIN_ROWS, TrainingSummary, VALIDATION_FRACTION, split_tail};

/// The default held-out fraction of each device's rows.
pub const DEFAULT_HELDOUT_FRACTION: f64 = 0.25;

/// One device's comparison of the base and its fine-tuned model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceTransfer {
    pub device: String,
    pub train_rows: usize,
    pub heldout_rows: usize,
    /// Mean squared reconstruction error of the base model on the device's
    /// held-out rows.
    pub base_heldout_loss: f64,
    /// The same for the device's fine-tuned model.
    pub fine_tuned_heldout_loss: f64,
    /// `(base − fine-tuned) / base`; 0 when the base loss is 0.
    pub gain: f64,
    pub fine_tuning: TrainingSummary,
}

/// The serialisable summary of a fleet run (for the training report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    pub heldout_fraction: f64,
    pub hidden: usize,
    /// How the base model's training went.
    pub base: TrainingSummary,
    /// One entry per device, by device name.
    pub devices: Vec<DeviceTransfer>,
    /// Devices the caller left out of the run, each with why (e.g. too few
    /// rows); [`train_fleet`] itself leaves none out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl FleetReport {
    /// Mean gain over the devices (`None` without devices).
    pub fn mean_gain(&self) -> Option<f64> {
        (!self.devices.is_empty())
            .then(|| self.devices.iter().map(|d| d.gain).sum::<f64>() / self.devices.len() as f64)
    }

    /// Devices whose fine-tuned model has the lower held-out loss.
    pub fn improved(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.fine_tuned_heldout_loss < d.base_heldout_loss)
            .count()
    }
}

/// The models of a fleet run and its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetModels {
    pub base: Autoencoder,
    /// The fine-tuned model of each device.
    pub devices: BTreeMap<String, Autoencoder>,
    pub report: FleetReport,
}

fn on_device(device: &str) -> impl Fn(TrainError) -> TrainError + '_ {
    move |e| TrainError::Device {
        device: device.to_owned(),
        source: Box::new(e),
    }
}

/// Rows of `parts` one after the other (all have `n` columns).
fn stack(parts: &[DMatrix<f64>], n: usize) -> DMatrix<f64> {
    let rows = parts.iter().map(|p| p.nrows()).sum();
    let mut out = DMatrix::zeros(rows, n);
    let mut at = 0;
    for p in parts {
        out.rows_mut(at, p.nrows()).copy_from(p);
        at += p.nrows();
    }
    out
}

/// Runs the procedure of the module docs on `devices` (device name → rows,
/// columns named by `names`).
pub fn train_fleet(
    devices: &BTreeMap<String, DMatrix<f64>>,
    names: &[String],
    heldout_fraction: f64,
    hp: &HyperParams,
) -> Result<FleetModels, TrainError> {
    if !(heldout_fraction > 0.0 && heldout_fraction < 1.0) {
        return Err(TrainError::Option {
            option: "heldout_fraction",
            message: format!("{heldout_fraction} is not in (0, 1)"),
        });
    }
    let n = match devices.values().next() {
        Some(z) => z.ncols(),
        None => {
            return Err(TrainError::Option {
                option: "devices",
                message: "the fleet has no device".into(),
            });
        }
    };
    // Per device: (training rows, held-out rows).
    let mut splits = Vec::with_capacity(devices.len());
    for (device, z) in devices {
        let wrap = on_device(device);
        if z.ncols() != n {
            return Err(wrap(TrainError::Shape {
                expected: n,
                got: z.ncols(),
            }));
        }
        super::super::check_matrix(z, names, 2, 1, true).map_err(&wrap)?;
        let (train, heldout) = split_tail(z, heldout_fraction);
        if train.nrows() < MIN_ROWS {
            return Err(wrap(TrainError::TooFewRows {
                rows: train.nrows(),
                needed: MIN_ROWS,
            }));
        }
        splits.push((device, train, heldout));
    }
    let (mut fit_parts, mut validation_parts) = (Vec::new(), Vec::new());
    for (_, train, _) in &splits {
        let (fit, validation) = split_tail(train, VALIDATION_FRACTION);
        fit_parts.push(fit);
        validation_parts.push(validation);
    }
    let union = stack(&fit_parts, n);
    drop(fit_parts);
    let validation = stack(&validation_parts, n);
    drop(validation_parts);
    // Constant columns allowed, as in `Autoencoder::fit`.
    super::super::check_matrix(&union, names, MIN_ROWS, 2, true)?;
    let base = Autoencoder::fit_split(&union, &validation, hp)?;
    drop(union);

    let mut tuned = BTreeMap::new();
    let mut report = Vec::with_capacity(splits.len());
    for (device, train, heldout) in &splits {
        let model = base.fine_tune(train, hp).map_err(on_device(device))?;
        let base_loss = base.loss(heldout);
        let tuned_loss = model.loss(heldout);
        report.push(DeviceTransfer {
            device: (*device).clone(),
            train_rows: train.nrows(),
            heldout_rows: heldout.nrows(),
            base_heldout_loss: base_loss,
            fine_tuned_heldout_loss: tuned_loss,
            gain: if base_loss > 0.0 {
                (base_loss - tuned_loss) / base_loss
            } else {
                0.0
            },
            fine_tuning: model.training.clone(),
        });
        tuned.insert((*device).clone(), model);
    }
    Ok(FleetModels {
        report: FleetReport {
            heldout_fraction,
            hidden: base.hidden_len(),
            base: base.training.clone(),
            devices: report,
            skipped: Vec::new(),
        },
        base,
        devices: tuned,
    })
}
